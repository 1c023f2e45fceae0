package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"path/filepath"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/testsuite"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/devserver"
	"dcd/internal/features"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
)

// embedCase is one model's embedding benchmark.
type embedCase struct {
	model  model
	images int // per measured shard
	batch  int
	reps   int
	// srcSide is the stored images' side; the model's preprocessing
	// resizes them (crop) when it differs from model.side.
	srcSide int
}

// Embedding measures the real EmbedShard path — read PNGs from a file://
// bucket, decode, preprocess, infer, write the Arrow parts and the feature
// file — in images/s, against ONNX Runtime alone running the same model on
// pre-made input tensors of the same batch size with the same threads.
func Embedding(ctx context.Context, o Options) ([]Result, error) {
	cases := []embedCase{
		{model: demoModel(), images: 4096, batch: 64, reps: 3, srcSide: 28},
		{model: resnetModel(224), images: 32, batch: 16, reps: 2, srcSide: 256},
	}
	if o.Quick {
		cases = []embedCase{
			{model: demoModel(), images: 1024, batch: 64, reps: 2, srcSide: 28},
			{model: resnetModel(112), images: 16, batch: 8, reps: 1, srcSide: 128},
		}
	}
	var out []Result
	for _, c := range cases {
		r, err := embedOne(ctx, o, c)
		if err != nil {
			return out, fmt.Errorf("bench: embed %s: %w", c.model.name, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func embedOne(ctx context.Context, o Options, c embedCase) (Result, error) {
	dir := filepath.Join(o.Dir, "embed-"+c.model.name)
	bucket, err := store.Open(ctx, "file://"+filepath.ToSlash(dir)+"?create_dir=1")
	if err != nil {
		return Result{}, err
	}
	defer bucket.Close()
	modelBytes, err := c.model.graph.Marshal()
	if err != nil {
		return Result{}, err
	}
	const modelKey = "models/bench.onnx"
	if err := store.WriteAll(ctx, bucket, modelKey, modelBytes); err != nil {
		return Result{}, err
	}
	sum := sha256.Sum256(modelBytes)
	spec := preprocess.Spec{Channels: c.model.channels, Height: c.model.side, Width: c.model.side}
	if c.srcSide != c.model.side {
		spec.Resize = preprocess.ResizeCrop
		spec.Mean, spec.Std = []float32{0.485, 0.456, 0.406}, []float32{0.229, 0.224, 0.225}
	}
	ref := activities.ModelRef{Path: modelKey, Spec: features.Spec{
		ModelDigest: hex.EncodeToString(sum[:]), Input: "image", Outputs: []string{"features"}, Columns: []string{"features"}, Preprocess: spec,
	}}

	// The images: one set of encoded PNGs, stored under a prefix per
	// shard, so every measured shard reads its own files and misses the
	// features cache.
	pngs, err := makePNGs(c.images, c.srcSide, c.model.channels)
	if err != nil {
		return Result{}, err
	}
	const run = "bench"
	shards := c.reps + 1 // shard 0 warms the session up
	for s := 0; s < shards; s++ {
		n := c.images
		if s == 0 {
			n = c.batch
		}
		var sh dataset.Shard
		for i := 0; i < n; i++ {
			key := fmt.Sprintf("images/%d/%06d.png", s, i)
			if err := store.WriteAll(ctx, bucket, key, pngs[i]); err != nil {
				return Result{}, err
			}
			sh.Items = append(sh.Items, dataset.Item{ID: int64(i), Key: key, Label: "0"})
		}
		if err := store.WriteAll(ctx, bucket, activities.ShardKey(run, activities.Pool, s), sh.Marshal()); err != nil {
			return Result{}, err
		}
	}

	opt := ortrun.Options{Threads: o.threads()}
	sessions := activities.NewSessions(opt)
	defer sessions.Close()
	acts := &activities.Activities{Bucket: bucket, Mem: memory.NewGoAllocator(), Sessions: sessions}
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(devserver.QuietLogger())
	env := ts.NewTestActivityEnvironment()
	env.RegisterActivity(acts)
	embedShard := func(s int) error {
		v, err := env.ExecuteActivity(acts.EmbedShard, activities.EmbedShardInput{
			Run: run, Dataset: activities.Pool, Shard: s, Model: ref, BatchSize: c.batch, PartSize: 4 * c.batch,
		})
		if err != nil {
			return err
		}
		var res activities.EmbedShardResult
		if err := v.Get(&res); err != nil {
			return err
		}
		if res.Cached || res.Rejects != 0 {
			return fmt.Errorf("shard %d: cached %v, %d rejects: the benchmark must embed every image", s, res.Cached, res.Rejects)
		}
		return nil
	}
	if err := embedShard(0); err != nil {
		return Result{}, err
	}

	sess, err := ortrun.NewSession(c.model.name, modelBytes, []string{"image"}, []string{"features"}, opt)
	if err != nil {
		return Result{}, err
	}
	defer sess.Close()
	input := make([]float32, c.batch*spec.Size())
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range input {
		input[i] = rng.Float32()
	}
	shape := []int64{int64(c.batch), int64(c.model.channels), int64(c.model.side), int64(c.model.side)}
	infer := func() error {
		for done := 0; done < c.images; done += c.batch {
			n := min(c.batch, c.images-done)
			if _, err := sess.Run(ortrun.Tensor{Shape: append([]int64{int64(n)}, shape[1:]...), Floats: input[:n*spec.Size()]}); err != nil {
				return err
			}
		}
		return nil
	}
	if _, err := sess.Run(ortrun.Tensor{Shape: shape, Floats: input}); err != nil { // warm up
		return Result{}, err
	}
	next := 1
	pipeline := func() error {
		next++
		return embedShard(next - 1)
	}
	times, err := best(c.reps, infer, pipeline)
	if err != nil {
		return Result{}, err
	}
	rate := func(t time.Duration) float64 { return float64(c.images) / t.Seconds() }
	o.logf("embed %s: %d images, batch %d, %.3g GFLOP/img: pipeline %s, inference alone %s",
		c.model.name, c.images, c.batch, c.model.gflop, times[1], times[0])
	return throughput("embed_"+c.model.name, "images/s", rate(times[1]), rate(times[0]), 0.9), ctx.Err()
}

// makePNGs encodes n distinct images of side×side pixels: a few random
// filled shapes on a gradient, which compress like real pictures rather
// than like noise.
func makePNGs(n, side, channels int) ([][]byte, error) {
	rng := rand.New(rand.NewPCG(7, uint64(side)))
	out := make([][]byte, n)
	for i := range out {
		var img image.Image
		shade := func(x, y int) uint8 { return uint8((x + y) * 255 / (2 * side)) }
		type rect struct{ x0, y0, x1, y1 int }
		var rects []rect
		for range 4 {
			x, y := rng.IntN(side), rng.IntN(side)
			rects = append(rects, rect{x, y, x + 1 + rng.IntN(side/3), y + 1 + rng.IntN(side/3)})
		}
		inRect := func(x, y int) int {
			for j, r := range rects {
				if x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1 {
					return j
				}
			}
			return -1
		}
		if channels == 1 {
			g := image.NewGray(image.Rect(0, 0, side, side))
			for y := 0; y < side; y++ {
				for x := 0; x < side; x++ {
					v := uint8(0)
					if inRect(x, y) >= 0 {
						v = 255
					}
					g.SetGray(x, y, color.Gray{Y: v})
				}
			}
			img = g
		} else {
			c := image.NewRGBA(image.Rect(0, 0, side, side))
			for y := 0; y < side; y++ {
				for x := 0; x < side; x++ {
					v := shade(x, y)
					col := color.RGBA{R: v, G: 255 - v, B: uint8(i), A: 255}
					if j := inRect(x, y); j >= 0 {
						col = color.RGBA{R: uint8(60 * j), G: uint8(i * 7), B: 200, A: 255}
					}
					c.SetRGBA(x, y, col)
				}
			}
			img = c
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, img); err != nil {
			return nil, err
		}
		out[i] = buf.Bytes()
	}
	return out, nil
}
