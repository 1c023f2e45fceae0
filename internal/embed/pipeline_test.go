package embed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"gocloud.dev/blob"
	_ "gocloud.dev/blob/memblob"
	"image"
	"image/color"
	"image/png"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
)

// flatten is a model whose features are its input pixels.
func flatten(t *testing.T) *ortrun.Session { return flattenBatch(t, -1) }

// flattenBatch is flatten with its batch fixed to n (-1: any), as a model
// exported without a dynamic batch axis.
func flattenBatch(t *testing.T, n int64) *ortrun.Session {
	return newSession(t, &onnx.Graph{
		Name:    "flatten",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{n, 1, 2, 2}}},
		Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 4}}},
		Nodes:   []onnx.Node{{Op: "Flatten", Inputs: []string{"image"}, Outputs: []string{"features"}, Attrs: map[string]any{"axis": 1}}},
	})
}

// newSession opens a one-thread session of g, from its first input to its
// first output, closed when the test ends.
func newSession(t testing.TB, g *onnx.Graph) *ortrun.Session {
	t.Helper()
	if err := ortrun.Init(ortrun.DefaultLibrary()); err != nil {
		t.Fatalf("%v (run `make setup`)", err)
	}
	model, err := g.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s, err := ortrun.NewSession(g.Name, model, []string{g.Inputs[0].Name}, []string{g.Outputs[0].Name}, ortrun.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// pngOf is a 2×2 gray image whose pixels are v, v+1, v+2, v+3.
func pngOf(v int) []byte {
	img := image.NewGray(image.Rect(0, 0, 2, 2))
	for i := range 4 {
		img.SetGray(i%2, i/2, color.Gray{Y: uint8(v + i)})
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	return buf.Bytes()
}

// fakeStore maps "img/<n>" to pngOf(n); "bad/<n>" is not an image and
// "missing/<n>" fails to read. Reads take a little while, in any order.
func fakeStore(ctx context.Context, uri string) ([]byte, error) {
	var n int
	if _, err := fmt.Sscanf(uri[strings.IndexByte(uri, '/')+1:], "%d", &n); err != nil {
		return nil, err
	}
	time.Sleep(time.Duration(n%5) * 100 * time.Microsecond)
	switch {
	case strings.HasPrefix(uri, "bad/"):
		return []byte("not an image"), nil
	case strings.HasPrefix(uri, "missing/"):
		return nil, fmt.Errorf("no such object: %w", ErrUnreadable)
	case strings.HasPrefix(uri, "huge/"):
		return nil, fmt.Errorf("%w: the object is too large", ErrRejected)
	}
	return pngOf(n % 250), nil
}

func TestEmbedOrderAndRejects(t *testing.T) {
	sess := flatten(t)
	var images []Image
	wantRejects := map[string]bool{}
	var rejectOrder []string
	for i := range 203 {
		uri := fmt.Sprintf("img/%d", i)
		switch {
		case i%17 == 3:
			uri = fmt.Sprintf("bad/%d", i)
			wantRejects[uri] = true
			rejectOrder = append(rejectOrder, uri)
		case i%29 == 5:
			uri = fmt.Sprintf("missing/%d", i)
			wantRejects[uri] = true
			rejectOrder = append(rejectOrder, uri)
		case i%31 == 7:
			uri = fmt.Sprintf("huge/%d", i)
			wantRejects[uri] = true
			rejectOrder = append(rejectOrder, uri)
		}
		images = append(images, Image{ID: int64(i), URI: uri})
	}
	// A model of a fixed batch (fixed > 0) runs its batches in ORT calls
	// of that many images, the last filled out; BatchSize rounded up to a
	// multiple of it is what each batch covers (size).
	fixed := map[int]*ortrun.Session{0: sess}
	for _, cfg := range []struct{ batch, readers, decoders, ahead, fixed, size int }{
		{16, 0, 0, 0, 0, 16}, {7, 1, 1, 1, 0, 7}, {64, 32, 2, 4, 0, 64}, {1, 3, 2, 2, 0, 1}, {500, 4, 4, 1, 0, 500},
		{16, 0, 0, 0, 1, 16}, {16, 5, 2, 1, 3, 18}, {7, 0, 0, 0, 64, 64},
	} {
		if fixed[cfg.fixed] == nil {
			fixed[cfg.fixed] = flattenBatch(t, int64(cfg.fixed))
		}
		e := &Embedder{Name: "flatten", Session: fixed[cfg.fixed], Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2, Scale: preprocess.ScaleByte},
			BatchSize: cfg.batch, Readers: cfg.readers, Decoders: cfg.decoders, Ahead: cfg.ahead, FixedBatch: cfg.fixed}
		var got []int64
		var batchRejects []Reject
		seen := 0
		rejects, err := e.Embed(context.Background(), images, fakeStore, func(b Batch) error {
			// Every batch but the last covers size images, rejects included.
			if n := len(b.Images) + len(b.Rejects); n != min(cfg.size, len(images)-seen) {
				return fmt.Errorf("batch at image %d covers %d images, want %d", seen, n, min(cfg.size, len(images)-seen))
			}
			seen += len(b.Images) + len(b.Rejects)
			batchRejects = append(batchRejects, b.Rejects...)
			if len(b.Images) > 0 && (len(b.Vectors) != 1 || b.Dims[0] != 4) {
				return fmt.Errorf("batch of %d images, %d outputs, dims %v", len(b.Images), len(b.Vectors), b.Dims)
			}
			for i, im := range b.Images {
				var n int
				fmt.Sscanf(im.URI, "img/%d", &n)
				want := []float32{float32(n), float32(n + 1), float32(n + 2), float32(n + 3)}
				if v := b.Vectors[0][i*4 : (i+1)*4]; !slices.Equal(v, want) {
					return fmt.Errorf("%s: features %v, want %v", im.URI, v, want)
				}
				got = append(got, im.ID)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%+v: %v", cfg, err)
		}
		var want []int64
		for _, im := range images {
			if !wantRejects[im.URI] {
				want = append(want, im.ID)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%+v: embedded ids %v, want %v", cfg, got, want)
		}
		if !slices.Equal(batchRejects, rejects) {
			t.Fatalf("%+v: the batches' rejects %v differ from Embed's %v", cfg, batchRejects, rejects)
		}
		if len(rejects) != len(wantRejects) {
			t.Fatalf("%+v: %d rejects, want %d: %v", cfg, len(rejects), len(wantRejects), rejects)
		}
		for i, r := range rejects {
			if r.URI != rejectOrder[i] || r.Reason == "" {
				t.Fatalf("%+v: reject %d: %+v", cfg, i, r)
			}
			if strings.HasPrefix(r.URI, "huge/") && r.Unread() {
				t.Fatalf("%+v: reject %+v: a file too large was read; it is no unread image", cfg, r)
			}
			if strings.HasPrefix(r.URI, "missing/") && !strings.HasPrefix(r.Reason, "read: ") {
				t.Fatalf("%+v: reject %+v: reason should start with read:", cfg, r)
			}
		}
	}
}

// A decoder that panics on an image (a bug an image reached) rejects that
// image instead of ending the worker: it runs on a reader goroutine, which
// nothing else recovers.
func TestEmbedRejectsAnImageTheDecoderPanicsOn(t *testing.T) {
	sess := flatten(t)
	defer func(f func(preprocess.Prepared, []float32, []byte) error) { decodeFill = f }(decodeFill)
	decodeFill = func(spec preprocess.Prepared, dst []float32, data []byte) error {
		if bytes.Equal(data, pngOf(7)) {
			var table []int
			_ = table[len(data)] // out of range
		}
		return spec.DecodeFill(dst, data)
	}
	var images []Image
	for i := range 10 {
		images = append(images, Image{ID: int64(i), URI: fmt.Sprintf("img/%d", i)})
	}
	e := &Embedder{Name: "flatten", Session: sess, Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2, Scale: preprocess.ScaleByte}, BatchSize: 4}
	n := 0
	rejects, err := e.Embed(context.Background(), images, fakeStore, func(b Batch) error { n += len(b.Images); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if n != 9 || len(rejects) != 1 || rejects[0].URI != "img/7" || !strings.Contains(rejects[0].Reason, "index out of range") {
		t.Errorf("%d embedded, rejects %+v: want img/7 rejected with the panic's message", n, rejects)
	}
}

func TestEmbedStopsOnEmitErrorAndCancel(t *testing.T) {
	sess := flatten(t)
	var images []Image
	for i := range 500 {
		images = append(images, Image{ID: int64(i), URI: fmt.Sprintf("img/%d", i)})
	}
	e := &Embedder{Name: "flatten", Session: sess, Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2}, BatchSize: 8}
	before := runtime.NumGoroutine()
	boom := errors.New("boom")
	var batches atomic.Int32
	_, err := e.Embed(context.Background(), images, fakeStore, func(b Batch) error {
		if batches.Add(1) == 3 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || batches.Load() != 3 {
		t.Fatalf("err %v after %d batches, want boom after 3", err, batches.Load())
	}

	ctx, cancel := context.WithCancel(context.Background())
	_, err = e.Embed(ctx, images, fakeStore, func(b Batch) error {
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	// Embed waits for its goroutines before it returns.
	if n := runtime.NumGoroutine(); n > before+1 {
		t.Fatalf("%d goroutines after Embed, %d before", n, before)
	}
}

func TestEmbedEmpty(t *testing.T) {
	e := &Embedder{Name: "flatten", Session: flatten(t), Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2}}
	rejects, err := e.Embed(context.Background(), nil, fakeStore, func(Batch) error { return errors.New("no batch expected") })
	if err != nil || len(rejects) != 0 {
		t.Fatalf("rejects %v, err %v", rejects, err)
	}
}

// A model whose output is not finite fails the batch with an OutputError
// naming the model, its tensor and the image, whether the value is +Inf,
// -Inf or NaN.
func TestEmbedRejectsNonFiniteOutput(t *testing.T) {
	for _, tc := range []struct {
		op     string
		inputs []string
		want   string
	}{
		{"Reciprocal", []string{"image"}, "+Inf"},  // 1/0
		{"Log", []string{"image"}, "-Inf"},         // log 0
		{"Div", []string{"image", "image"}, "NaN"}, // 0/0
	} {
		sess := newSession(t, &onnx.Graph{
			Name:    tc.op,
			Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
			Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 1, 2, 2}}},
			Nodes:   []onnx.Node{{Op: tc.op, Inputs: tc.inputs, Outputs: []string{"features"}}},
		})
		// img/1 has no zero pixel; img/0's first pixel is 0.
		images := []Image{{ID: 1, URI: "img/1"}, {ID: 0, URI: "img/0"}}
		e := &Embedder{Name: "models/" + tc.op + ".onnx", Outputs: []string{"features"}, Session: sess, Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2}, BatchSize: 2}
		_, err := e.Embed(context.Background(), images, fakeStore, func(Batch) error { return nil })
		var oe *OutputError
		if !errors.As(err, &oe) {
			t.Fatalf("%s: got %v, want an OutputError", tc.op, err)
		}
		for _, w := range []string{"models/" + tc.op + ".onnx", `output "features"`, tc.want, "img/0", "non-finite"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not name %q", tc.op, err, w)
			}
		}
	}
}

// The spec is checked once, before any image: a bad one fails Embed naming
// the model and the field, rather than rejecting every image. A layout
// written in lower case is the layout it names, for the tensor's shape as
// for its values.
func TestEmbedSpec(t *testing.T) {
	sess := flatten(t)
	e := &Embedder{Name: "models/flatten.onnx", Session: sess, Spec: preprocess.Spec{Channels: 2, Height: 2, Width: 2}}
	_, err := e.Embed(context.Background(), []Image{{URI: "img/1"}}, fakeStore, func(Batch) error { return errors.New("no batch expected") })
	if err == nil || !strings.Contains(err.Error(), "models/flatten.onnx") || !strings.Contains(err.Error(), "channels") {
		t.Errorf("a spec of 2 channels: %v, want an error naming the model and the channels", err)
	}

	nhwc := newSession(t, &onnx.Graph{
		Name:    "flatten_nhwc",
		Inputs:  []onnx.Value{{Name: "image", Elem: onnx.Float, Shape: []int64{-1, 2, 2, 3}}},
		Outputs: []onnx.Value{{Name: "features", Elem: onnx.Float, Shape: []int64{-1, 12}}},
		Nodes:   []onnx.Node{{Op: "Flatten", Inputs: []string{"image"}, Outputs: []string{"features"}, Attrs: map[string]any{"axis": 1}}},
	})
	e = &Embedder{Name: "flatten_nhwc", Session: nhwc, Spec: preprocess.Spec{Layout: "nhwc", Channels: 3, Height: 2, Width: 2, Scale: preprocess.ScaleByte}}
	var got []float32
	if _, err := e.Embed(context.Background(), []Image{{URI: "img/10"}}, fakeStore, func(b Batch) error {
		got = append(got, b.Vectors[0]...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []float32{10, 10, 10, 11, 11, 11, 12, 12, 12, 13, 13, 13} // gray replicated, pixel by pixel
	if !slices.Equal(got, want) {
		t.Errorf("NHWC features %v, want %v", got, want)
	}
}

// Readers is how many reads are in flight, which is what a store whose
// reads wait on latency needs: the first Readers reads all start before
// any returns, and no more than that ever run at once. So too for a model
// whose batch is fixed to 1, which still reads batches of BatchSize.
func TestEmbedReadsAtOnce(t *testing.T) {
	for _, c := range []struct{ readers, fixed int }{{1, 0}, {5, 0}, {24, 0}, {24, 1}} {
		readers, sess := c.readers, flatten(t)
		if c.fixed > 0 {
			sess = flattenBatch(t, int64(c.fixed))
		}
		var images []Image
		for i := range 100 {
			images = append(images, Image{ID: int64(i), URI: fmt.Sprintf("img/%d", i)})
		}
		var inFlight, most, started atomic.Int32
		all := make(chan struct{})
		read := func(ctx context.Context, uri string) ([]byte, error) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			if started.Add(1) == int32(readers) {
				close(all)
			}
			select { // the first reads wait for one another
			case <-all:
			case <-time.After(5 * time.Second):
				return nil, fmt.Errorf("%s: %d reads in flight after 5 s, want %d", uri, inFlight.Load(), readers)
			}
			return fakeStore(ctx, uri)
		}
		e := &Embedder{Name: "flatten", Session: sess, Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2, Scale: preprocess.ScaleByte},
			BatchSize: 32, Readers: readers, FixedBatch: c.fixed}
		if _, err := e.Embed(context.Background(), images, read, func(Batch) error { return nil }); err != nil {
			t.Fatalf("%d readers: %v", readers, err)
		}
		if most.Load() != int32(readers) {
			t.Errorf("%d readers: at most %d reads at once", readers, most.Load())
		}
	}
}

// An embedding's readers hold at most heldBytes of whole images read and
// not yet decoded, however many read at once: large files (a video in a
// class folder) wait for one another's decoding, not pile up 64 at once.
func TestEmbedHoldsBoundedBytes(t *testing.T) {
	defer func(n int64) { heldBytes = n }(heldBytes)
	heldBytes = 3 << 20
	ctx := context.Background()
	b, err := blob.OpenBucket(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var images []Image
	for i := range 24 {
		key := fmt.Sprintf("big/%d", i)
		if err := b.WriteAll(ctx, key, make([]byte, 1<<20), nil); err != nil { // a MiB of no image
			t.Fatal(err)
		}
		images = append(images, Image{ID: int64(i), URI: key})
	}
	var holding, most atomic.Int64
	read := func(ctx context.Context, uri string) ([]byte, error) {
		data, err := store.ReadAll(ctx, b, uri)
		n := holding.Add(int64(len(data)))
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		return data, err
	}
	defer func(f func(preprocess.Prepared, []float32, []byte) error) { decodeFill = f }(decodeFill)
	decodeFill = func(spec preprocess.Prepared, dst []float32, data []byte) error {
		time.Sleep(5 * time.Millisecond) // decoders slower than the reads
		holding.Add(-int64(len(data)))
		return errors.New("not an image")
	}
	e := &Embedder{Name: "flatten", Session: flatten(t), Spec: preprocess.Spec{Channels: 1, Height: 2, Width: 2, Scale: preprocess.ScaleByte},
		BatchSize: 8, Readers: 16, Decoders: 1}
	rejects, err := e.Embed(ctx, images, read, func(Batch) error { return nil })
	if err != nil || len(rejects) != len(images) {
		t.Fatalf("%d rejects, %v; want %d", len(rejects), err, len(images))
	}
	if most.Load() > heldBytes {
		t.Errorf("the readers held %d bytes at once, more than the %d allowed", most.Load(), heldBytes)
	}
}
