package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"go.temporal.io/sdk/testsuite"
	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/devserver"
	"dcd/internal/features"
	"dcd/internal/mnist"
	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// embedCase is one model's embedding benchmark.
type embedCase struct {
	model model
	// shards of images each are embedded per measured repetition, at
	// least: a fast model's run grows (see minRun).
	shards, images int
	batch, reps    int
	// srcSide is the stored images' side; the model's preprocessing
	// resizes them (crop) when it differs from model.side. Gray models
	// get MNIST digits (28×28), as the demo does; others makeImages'
	// PNGs, or with photos its JPEGs.
	srcSide int
	// photos stores JPEG photographs of 4:3 (srcSide wide) at quality
	// 90, as a pool of camera or ImageNet pictures is, where decoding
	// costs several times a PNG's.
	photos bool
	// objects stores one object per image instead of a WebDataset .tar
	// per shard; the result is then informative, without a goal.
	objects bool
	// ceiling reports the pipeline's rate alone, without a baseline or a
	// goal: the model is freeModel, whose inference is no yardstick.
	ceiling bool
}

// Sizes of the embedding runs outside -quick: a run grows until inference
// alone takes minRun, its shards to defaultShardImages (a pass's default
// shards.size, 2000, in whole batches) and then to maxShards.
const (
	minRun             = 250 * time.Millisecond
	defaultShardImages = 2048
	maxShards          = 64
)

func (c embedCase) name() string {
	switch {
	case c.objects:
		return "embed_" + c.model.name + "_objects"
	case c.ceiling:
		return "embed_pipeline_ceiling"
	case c.photos:
		return "embed_" + c.model.name + "_jpeg"
	}
	return "embed_" + c.model.name
}

// Embedding measures the real EmbedShard path — read PNGs from a file://
// bucket, decode, preprocess, infer, write the Arrow parts and the feature
// file — in images/s, against ONNX Runtime alone running the same model on
// pre-made input tensors of the same batch size with the same threads. The
// images are packed in a WebDataset archive per shard, as a large pool
// should be; embed_demo_objects stores the demo model's images one object
// each, to show what that costs. embed_pipeline_ceiling embeds the demo's
// images with a model that costs nothing: the most images a second these
// CPUs can feed an accelerator, whatever its speed.
func Embedding(ctx context.Context, o Options) ([]Result, error) {
	cases := []embedCase{
		{model: demoModel(), shards: 4, images: 2048, batch: 64, reps: 6, srcSide: 28},
		{model: demoModel(), shards: 4, images: 2048, batch: 64, reps: 3, srcSide: 28, objects: true},
		{model: freeModel(), shards: 4, images: 2048, batch: 64, reps: 3, srcSide: 28, ceiling: true},
		{model: resnetModel(224), shards: 2, images: 16, batch: 16, reps: 2, srcSide: 256},
		{model: resnetModel(224), shards: 2, images: 16, batch: 16, reps: 2, srcSide: 500, photos: true},
	}
	if o.Quick {
		cases = []embedCase{
			{model: demoModel(), shards: 2, images: 512, batch: 64, reps: 2, srcSide: 28},
			{model: demoModel(), shards: 2, images: 512, batch: 64, reps: 2, srcSide: 28, objects: true},
			{model: freeModel(), shards: 2, images: 512, batch: 64, reps: 2, srcSide: 28, ceiling: true},
			{model: resnetModel(112), shards: 2, images: 8, batch: 8, reps: 1, srcSide: 128},
			{model: resnetModel(112), shards: 2, images: 8, batch: 8, reps: 1, srcSide: 160, photos: true},
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
	dir := filepath.Join(o.Dir, c.name())
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

	// Shard 0, one batch, warms the pipeline's session up.
	const run = "bench"
	var stored int // shards in storage
	storeShards := func(n, images int) error {
		var files [][]byte
		var err error
		ext := "png"
		switch {
		case c.model.channels == 1:
			files, err = digitPNGs(images)
		case c.photos:
			files, err = makeImages(images, c.srcSide, c.srcSide*3/4, true)
			ext = "jpg"
		default:
			files, err = makeImages(images, c.srcSide, c.srcSide, false)
		}
		if err != nil {
			return err
		}
		for ; stored < n; stored++ {
			sh, err := storeImages(ctx, bucket, fmt.Sprintf("images/%d", stored), files, ext, c.objects)
			if err != nil {
				return err
			}
			if err := store.WriteAll(ctx, bucket, activities.ShardKey(run, activities.Pool, stored), sh.Marshal()); err != nil {
				return err
			}
		}
		return nil
	}
	if err := storeShards(1, c.batch); err != nil {
		return Result{}, err
	}

	opt := ortrun.Options{Threads: o.modelThreads(), EP: o.EP}
	sessions := activities.NewSessions(opt, ortrun.Options{Threads: o.searchThreads()})
	defer sessions.Close()
	acts := &activities.Activities{Bucket: bucket, Mem: memory.NewGoAllocator(), Sessions: sessions}
	var ts testsuite.WorkflowTestSuite
	ts.SetLogger(devserver.QuietLogger())
	var envs []*testsuite.TestActivityEnvironment
	streams := o.concurrency()
	for range streams {
		env := ts.NewTestActivityEnvironment()
		env.RegisterActivity(acts)
		envs = append(envs, env)
	}
	embedShard := func(env *testsuite.TestActivityEnvironment, s int) error {
		v, err := env.ExecuteActivity(acts.EmbedShard, activities.EmbedShardInput{
			Run: run, Dataset: activities.Pool, Shard: s, Model: ref, BatchSize: c.batch,
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
	if err := embedShard(envs[0], 0); err != nil {
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
	shards, images := c.shards, c.images
	infer := func() error {
		total := shards * images
		return inStreams(streams, func(stream int) error {
			for done := stream * c.batch; done < total; done += streams * c.batch {
				n := min(c.batch, total-done)
				if _, err := sess.Run(ortrun.Tensor{Shape: append([]int64{int64(n)}, shape[1:]...), Floats: input[:n*spec.Size()]}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if _, err := sess.Run(ortrun.Tensor{Shape: shape, Floats: input}); err != nil { // warm up
		return Result{}, err
	}
	// A small run overstates the time an image takes (each stream's first
	// and last batch run alone), so the sizes grow from a measurement of
	// the grown run, a few times over, until they hold.
	for round := 0; round < 4 && !o.Quick; round++ {
		start := time.Now()
		if err := infer(); err != nil {
			return Result{}, err
		}
		s, im := c.grown(shards, images, time.Since(start), streams)
		if s == shards && im == images {
			break
		}
		shards, images = s, im
	}
	if err := storeShards(1+shards, images); err != nil {
		return Result{}, err
	}
	pipeline := func() error {
		var claimed atomic.Int32
		return inStreams(streams, func(stream int) error {
			for s := int(claimed.Add(1)) - 1; s < shards; s = int(claimed.Add(1)) - 1 {
				if err := embedShard(envs[stream], 1+s); err != nil {
					return err
				}
			}
			return nil
		})
	}
	// Each repetition embeds the same shards again: their cache entries
	// go between repetitions, untimed.
	uncache := func() error { return removeAll(ctx, bucket, "features/") }
	var cpu [2]time.Duration
	times, err := best(c.reps, metered(&cpu[0], labelled(c.name()+"/inference", infer)), metered(&cpu[1], labelled(c.name()+"/pipeline", pipeline)), uncache)
	if err != nil {
		return Result{}, err
	}
	total := shards * images
	rate := func(t time.Duration) float64 { return float64(total) / t.Seconds() }
	perImage := func(t time.Duration) float64 { return t.Seconds() * 1e6 / float64(c.reps*total) }
	o.logf("%s: %d shards of %d images, %d at once, %d ORT threads each, batch %d, %.3g GFLOP/img: pipeline %s, inference alone %s; CPU per image %.1f µs, inference alone %.1f µs",
		c.name(), shards, images, streams, opt.Threads, c.batch, c.model.gflop, times[1], times[0], perImage(cpu[1]), perImage(cpu[0]))
	switch {
	case c.ceiling:
		return info(c.name(), "images/s", rate(times[1]), 0), ctx.Err()
	case c.objects:
		return info(c.name(), "images/s", rate(times[1]), rate(times[0])), ctx.Err()
	}
	return throughput(c.name(), "images/s", rate(times[1]), rate(times[0]), 0.9), ctx.Err()
}

// grown is the sizes of a run long enough to measure, given that inference
// alone took over shards of images each. A fast model (a GPU's) gets
// through a case's own sizes in a few milliseconds, where the first shard's
// start and the last one's commit, which no other shard overlaps, would
// dominate; a pool of millions of images runs in the steady state between.
// So the run grows until inference alone would take minRun: its shards to
// a pass's default size first, then in number. Shards come in a multiple
// of streams, so that the pipeline's streams each embed as many, as
// inference alone spreads its batches evenly over its own.
// embed_demo_objects keeps its sizes: a file per image is informative only.
func (c embedCase) grown(shards, images int, took time.Duration, streams int) (int, int) {
	if c.objects {
		return shards, images
	}
	if grow := minRun.Seconds() / took.Seconds(); grow > 1.25 { // near enough holds
		total := float64(shards*images) * grow
		images = min(max(images, defaultShardImages), int(float64(images)*grow)) / c.batch * c.batch
		shards = min(maxShards, max(shards, int(math.Ceil(total/float64(images)))))
	}
	if r := shards % streams; r != 0 {
		if shards+streams-r <= maxShards || shards < streams {
			shards += streams - r
		} else {
			shards -= r
		}
	}
	return shards, images
}

// concurrency is how many shards the pipeline embeds at once.
func (o Options) concurrency() int {
	if o.Concurrency > 0 {
		return o.Concurrency
	}
	return activities.DefaultConcurrency(o.EP)
}

// inStreams runs fn(0) … fn(n-1) at once and returns the first error.
func inStreams(n int, fn func(stream int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// removeAll deletes every object under prefix.
func removeAll(ctx context.Context, bucket *blob.Bucket, prefix string) error {
	it := bucket.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := bucket.Delete(ctx, obj.Key); err != nil {
			return err
		}
	}
}

// storeImages stores files (of extension ext) under prefix, one object
// each or as one WebDataset archive (prefix.tar, labels in .cls members),
// and returns them as a shard, listed as the planner lists them.
func storeImages(ctx context.Context, bucket *blob.Bucket, prefix string, files [][]byte, ext string, objects bool) (dataset.Shard, error) {
	var sh dataset.Shard
	if objects {
		for i, p := range files {
			key := fmt.Sprintf("%s/0/%06d.%s", prefix, i, ext)
			if err := store.WriteAll(ctx, bucket, key, p); err != nil {
				return sh, err
			}
		}
	} else {
		var buf bytes.Buffer
		w := webdataset.NewWriter(&buf)
		for i, p := range files {
			if err := w.Write(fmt.Sprintf("%06d", i), ext, p, "0", ""); err != nil {
				return sh, err
			}
		}
		if err := w.Close(); err != nil {
			return sh, err
		}
		if err := store.WriteAll(ctx, bucket, prefix+".tar", buf.Bytes()); err != nil {
			return sh, err
		}
	}
	ds := schemas.Dataset{Prefix: prefix}
	if !objects {
		ds = schemas.Dataset{WebDataset: prefix + ".tar"}
	}
	err := dataset.Walk(ctx, bucket, ds, func(it dataset.Item) error {
		sh.Items = append(sh.Items, it)
		return nil
	})
	return sh, err
}

// makeImages encodes n distinct RGB pictures of w×h pixels: a few random
// filled shapes on a gradient, which as PNGs compress like real pictures
// rather than like noise. As photos, grain is added, as a camera's sensor
// adds it, and they are JPEGs at quality 90: 500×375 of them take about
// 100 KB each, about an ImageNet JPEG's size.
func makeImages(n, w, h int, photos bool) ([][]byte, error) {
	rng := rand.New(rand.NewPCG(7, uint64(w)))
	out := make([][]byte, n)
	for i := range out {
		shade := func(x, y int) uint8 { return uint8((x + y) * 255 / (w + h)) }
		type rect struct{ x0, y0, x1, y1 int }
		var rects []rect
		for range 4 {
			x, y := rng.IntN(w), rng.IntN(h)
			rects = append(rects, rect{x, y, x + 1 + rng.IntN(w/3), y + 1 + rng.IntN(h/3)})
		}
		inRect := func(x, y int) int {
			for j, r := range rects {
				if x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1 {
					return j
				}
			}
			return -1
		}
		img := image.NewRGBA(image.Rect(0, 0, w, h))
		for y := 0; y < h; y++ {
			for x := 0; x < w; x++ {
				v := shade(x, y)
				col := color.RGBA{R: v, G: 255 - v, B: uint8(i), A: 255}
				if j := inRect(x, y); j >= 0 {
					col = color.RGBA{R: uint8(60 * j), G: uint8(i * 7), B: 200, A: 255}
				}
				img.SetRGBA(x, y, col)
			}
		}
		var buf bytes.Buffer
		var err error
		if photos {
			for k := range img.Pix {
				if k%4 != 3 {
					img.Pix[k] = uint8(min(max(int(img.Pix[k])+rng.IntN(81)-40, 0), 255))
				}
			}
			err = jpeg.Encode(&buf, img, &jpeg.Options{Quality: 90})
		} else {
			err = png.Encode(&buf, img)
		}
		if err != nil {
			return nil, err
		}
		out[i] = buf.Bytes()
	}
	return out, nil
}

// digitPNGs encodes the first n MNIST test digits (repeating past 10,000)
// as image/png writes them, which is how the demo stores its images: a
// digit's antialiased strokes take about 320 bytes and twice the decoding
// of a flat synthetic shape.
func digitPNGs(n int) ([][]byte, error) {
	digits.once.Do(func() {
		digits.set, digits.err = mnist.LoadTest(mnist.DefaultDir())
	})
	if digits.err != nil {
		return nil, fmt.Errorf("bench: MNIST, which `make setup` installs: %w", digits.err)
	}
	out := make([][]byte, n)
	for i := range out {
		var buf bytes.Buffer
		if err := png.Encode(&buf, digits.set.Image(i%digits.set.Len())); err != nil {
			return nil, err
		}
		out[i] = buf.Bytes()
	}
	return out, nil
}

// digits is the MNIST test split, loaded once per process.
var digits struct {
	once sync.Once
	set  *mnist.Set
	err  error
}
