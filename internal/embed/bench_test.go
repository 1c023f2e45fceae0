package embed

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
)

// digitPNGs is n digit-like images: a few random strokes of varying gray,
// as 28×28 gray PNGs, by URI.
func digitPNGs(n int) (map[string][]byte, []Image) {
	rng := rand.New(rand.NewPCG(1, 28))
	files := make(map[string][]byte)
	images := make([]Image, n)
	for i := range images {
		m := image.NewGray(image.Rect(0, 0, 28, 28))
		for range 3 {
			x, y, dx, dy := 4+rng.IntN(20), 4+rng.IntN(20), rng.IntN(3)-1, rng.IntN(3)-1
			for s := 0; s < 12; s++ {
				if x >= 0 && x < 28 && y >= 0 && y < 28 {
					m.Pix[y*28+x] = uint8(128 + rng.IntN(128))
				}
				x, y = x+dx, y+dy
			}
		}
		var buf bytes.Buffer
		png.Encode(&buf, m)
		uri := "img/" + strconv.Itoa(i)
		files[uri] = buf.Bytes()
		images[i] = Image{ID: int64(i), URI: uri}
	}
	return files, images
}

// meanSession is a model that only averages each 28×28 image: what is
// measured around it is what Embed adds to a model's inference.
func meanSession(b *testing.B) *ortrun.Session {
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		b.Skip(err)
	}
	return newSession(b, &onnx.Graph{
		Name:    "mean",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 28, 28}}},
		Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 1, 1, 1}}},
		Nodes:   []onnx.Node{{Op: "GlobalAveragePool", Inputs: []string{"image"}, Outputs: []string{"features"}}},
	})
}

// BenchmarkEmbedRemoteObjects embeds images stored one object each on a
// simulated remote store that answers every read after 20 ms, as an
// object store's GET does: images a second are Readers / 20 ms, whatever
// the model, until the CPUs are the limit.
func BenchmarkEmbedRemoteObjects(b *testing.B) {
	sess := meanSession(b)
	files, images := digitPNGs(2048)
	read := func(ctx context.Context, uri string) ([]byte, error) {
		select {
		case <-time.After(20 * time.Millisecond):
			return files[uri], nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for _, readers := range []int{16, 64, 256} {
		b.Run("readers="+strconv.Itoa(readers), func(b *testing.B) {
			e := &Embedder{Name: "mean", Session: sess, Spec: preprocess.Spec{Channels: 1, Height: 28, Width: 28}, BatchSize: 64, Readers: readers}
			for b.Loop() {
				if _, err := e.Embed(context.Background(), images, read, func(Batch) error { return nil }); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*len(images))/b.Elapsed().Seconds(), "images/s")
		})
	}
}

// BenchmarkEmbedOverhead is the pipeline's own cost per image: 28×28 gray
// PNGs read from memory, decoded, filled into batches of 64 and passed
// through meanSession's model. It reports the process's CPU
// time per image, which is what the pipeline takes from the cores
// inference runs on.
func BenchmarkEmbedOverhead(b *testing.B) {
	sess := meanSession(b)
	files, images := digitPNGs(4096)
	read := func(_ context.Context, uri string) ([]byte, error) { return files[uri], nil }
	e := &Embedder{Name: "mean", Session: sess, Spec: preprocess.Spec{Channels: 1, Height: 28, Width: 28}, BatchSize: 64}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	for b.Loop() {
		if _, err := e.Embed(context.Background(), images, read, func(Batch) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N * len(images))
	b.ReportMetric(float64((cpu()-start).Microseconds())/n, "cpu-µs/image")
	b.ReportMetric(n/b.Elapsed().Seconds(), "images/s")
}
