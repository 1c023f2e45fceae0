package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strings"

	"gocloud.dev/blob"

	"dcd/activities"
	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/head"
	"dcd/internal/onnx"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/schemas"
)

type trainHeadArgs struct {
	storage, job, train, debug, out, work, ortLib, ep string
	threads                                           int
}

const trainHeadSynopsis = "-job KEY [-storage URL] [-train KEY] [-debug KEY] [-out KEY] [-work DIR]"

func parseTrainHead(e *cli, args []string) (trainHeadArgs, error) {
	var a trainHeadArgs
	fs := e.flags("train-head")
	fs.StringVar(&a.storage, "storage", store.DefaultURL(), "bucket URL (env DCD_STORAGE); the trainer placeholder {storage}")
	fs.StringVar(&a.job, "job", "", "key of the job file ({job}): target model, classes, recipe (required)")
	fs.StringVar(&a.train, "train", "", "key of the train manifest ({train}); default: the job's")
	fs.StringVar(&a.debug, "debug", "", "key of the debug-train manifest ({debug_train}); default: the job's")
	fs.StringVar(&a.out, "out", "", "key to write the ONNX model to ({model}); default: the job's")
	fs.StringVar(&a.work, "work", "", "folder for the spooled features ({work}); default: a temporary one")
	fs.StringVar(&a.ortLib, "ort-lib", ortrun.DefaultLibrary(), "path of libonnxruntime.so (env DCD_ORT_LIB)")
	fs.StringVar(&a.ep, "ep", "", "execution provider of the target: cpu or cuda; default the job target's ep, else DCD_EP, else cpu")
	fs.IntVar(&a.threads, "threads", runtime.GOMAXPROCS(0), "ONNX Runtime threads (default: the CPUs this process may use)")
	pos, err := parse(fs, trainHeadSynopsis, args)
	if err != nil {
		return a, err
	}
	e.devStorage(fs, &a.storage)
	if len(pos) != 0 {
		return a, usageErrorf("train-head: unexpected arguments %q (usage: starter train-head %s)", pos, trainHeadSynopsis)
	}
	if a.job == "" {
		return a, usageErrorf("train-head: -job is required (usage: starter train-head %s)", trainHeadSynopsis)
	}
	if a.ep != "" {
		if err := ortrun.CheckEP(a.ep); err != nil {
			return a, usageErrorf("train-head: -ep: %v", err)
		}
	}
	return a, nil
}

// provider is the execution provider the target embeds on: -ep, else
// the one the config gives the target (as a worker embeds it), else the
// worker's own, which TrainExternal hands its trainer as DCD_EP.
func (a trainHeadArgs) provider(job schemas.TrainJob) string {
	for _, ep := range []string{a.ep, job.Target.EP, os.Getenv("DCD_EP")} {
		if ep != "" {
			return ep
		}
	}
	return "cpu"
}

// cmdTrainHead is DCD's own external trainer (retrain.trainer): it embeds
// the train and debug-train images with the target model, spooling the
// features to a local file, trains a softmax head on them with the job's
// recipe (re-reading the spool on every pass, so memory stays flat), and
// writes the target's backbone with the new head as one ONNX model.
func cmdTrainHead(ctx context.Context, e *cli, args []string) error {
	a, err := parseTrainHead(e, args)
	if err != nil {
		return err
	}
	b, err := store.Open(ctx, a.storage)
	if err != nil {
		return err
	}
	defer b.Close()
	data, err := b.ReadAll(ctx, a.job)
	if err != nil {
		return fmt.Errorf("train-head: job %s: %w", a.job, err)
	}
	// A job is often written by hand: a field misspelled, or put at the
	// wrong level (preprocess beside target, not in it), would be ignored.
	var job schemas.TrainJob
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&job); err != nil {
		return fmt.Errorf("train-head: job %s: %w (the fields a job holds are README's \"A target for your own classes\")", a.job, err)
	}
	for _, o := range []struct{ flag, job *string }{{&a.train, &job.Train}, {&a.debug, &job.DebugTrain}, {&a.out, &job.Model}} {
		if *o.flag != "" {
			*o.job = *o.flag
		}
	}
	job = job.WithDefaults()
	// What would fail only after the embedding and the training, said now.
	if err := job.Validate(); err != nil {
		return fmt.Errorf("train-head: job %s: %w", a.job, err)
	}
	if a.work == "" {
		if a.work, err = os.MkdirTemp("", "dcd-train-head-"); err != nil {
			return err
		}
		defer os.RemoveAll(a.work)
	}
	buckets := &store.Buckets{}
	defer buckets.Close()
	t := job.Target.Preprocess
	if job.Target.Input == "" || t.Channels == 0 || t.Height == 0 || t.Width == 0 || t.Layout == "" {
		// A job written by hand, not by a pass: its target completed
		// from the model as a pass completes its config's.
		if err := ortrun.Init(a.ortLib); err != nil {
			return fmt.Errorf("train-head: %w", err)
		}
		var batch int
		if job.Target, batch, err = activities.CompleteTarget(ctx, buckets, b, job.Target); err != nil {
			return fmt.Errorf("train-head: job %s: %s", a.job, strings.TrimPrefix(err.Error(), "config: "))
		}
		job.TargetBatch = cmp.Or(job.TargetBatch, batch)
	}
	target, err := activities.ReadModel(ctx, buckets, b, job.Target.Path)
	if err != nil {
		return fmt.Errorf("train-head: target model: %w", err)
	}
	// The export's own refusals (the target's opset, a name its kept
	// graph uses), tried now on a head of these classes: after the
	// embedding and the training they would waste both.
	export := head.NewExportNames(job.Target.Features, job.Target.Logits, job.Output, job.Classes)
	export.Input, export.Preprocess = job.Target.Input, job.Target.Preprocess
	n := len(job.Classes)
	probe := &head.Head{Classes: n, Dim: 1, Mean: []float32{0}, Std: []float32{1}, W: make([]float32, n), B: make([]float32, n)}
	if _, err := probe.ONNX(target, export); err != nil {
		return fmt.Errorf("train-head: target model %s: %w", job.Target.Path, err)
	}
	// Each set's manifest read now, not after the sets before it are
	// embedded; a job with no debug-train set trains on train alone.
	sets := []struct {
		name, key string
		weight    float32
		empty     bool
	}{{"train", job.Train, 1, false}, {"debug-train", job.DebugTrain, float32(job.Retrain.DebugWeight), false}}
	for i := range sets {
		if sets[i].key == "" || isPrefix(sets[i].key) {
			continue
		}
		if sets[i].empty, err = headerOnly(ctx, b, sets[i].key); err != nil {
			return fmt.Errorf("train-head: %s manifest: %w", sets[i].name, err)
		}
	}
	if err := ortrun.Init(a.ortLib); err != nil {
		return fmt.Errorf("train-head: %w", err)
	}
	model, names, err := onnx.ExposeOutputs(target, []string{job.Target.Features})
	if err != nil {
		return fmt.Errorf("train-head: target model %s: %w", job.Target.Path, err)
	}
	ep := a.provider(job)
	if err := ortrun.CheckEP(ep); err != nil {
		return fmt.Errorf("train-head: job %s: target: %w", a.job, err)
	}
	sess, err := ortrun.NewSession(job.Target.Path, model, []string{job.Target.Input}, names, ortrun.Options{Threads: a.threads, EP: ep})
	if err != nil {
		return fmt.Errorf("train-head: target on %s: %w", ep, err)
	}
	fmt.Fprintf(e.stdout, "embedding with %s on %s\n", job.Target.Path, ep)
	defer sess.Close()
	emb := &embed.Embedder{Name: job.Target.Path, Outputs: []string{job.Target.Features}, Session: sess, Spec: job.Target.Preprocess, BatchSize: 64, FixedBatch: job.TargetBatch}

	// A file of its own, unlinked at once and read through its open
	// descriptor: a fixed -work (a disk large enough for the spool) is
	// shared by the trainers a pass runs at once, and a trainer killed
	// (a cancelled pass's SIGKILL) leaves none of its gigabytes behind.
	f, err := os.CreateTemp(a.work, "features-*.bin")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.Remove(f.Name()); err != nil {
		return err
	}
	spool := &spoolRows{f: f, name: f.Name()}
	w := bufio.NewWriterSize(f, 1<<20)
	src := dataset.Source{Bucket: b, Buckets: buckets}
	read := imageReader(buckets, b)
	classes := dataset.NewClasses(job.Classes)
	for _, set := range sets {
		if set.key == "" {
			fmt.Fprintf(e.stdout, "no %s set in the job: the head trains on the sets before\n", set.name)
			continue
		}
		n, rows, rejects, skipped := 0, 0, 0, 0
		// The manifest's images go to the embedder embedChunk at a time, so
		// memory holds a chunk's names, not a set's of millions.
		var images []embed.Image
		flush := func() error {
			rj, err := emb.Embed(ctx, images, read, func(bt embed.Batch) error {
				if len(bt.Images) == 0 {
					return nil
				}
				d := bt.Dims[0]
				if spool.dim == 0 {
					spool.dim = d
				}
				if d != spool.dim {
					// The spool's rows are read back at one stride.
					return fmt.Errorf("the target gives %d features an image for %s, %d for the images before", d, bt.Images[0].URI, spool.dim)
				}
				for i, im := range bt.Images {
					c := classes.Index(im.Label)
					if c < 0 {
						skipped++
						continue
					}
					if err := spool.write(w, bt.Vectors[0][i*d:(i+1)*d], c, set.weight); err != nil {
						return err
					}
					rows++
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("train-head: embed %s: %w", set.name, err)
			}
			n, rejects, images = n+len(images), rejects+len(rj), images[:0]
			return nil
		}
		if !set.empty {
			ds := schemas.Dataset{Manifest: set.key}
			if isPrefix(set.key) {
				ds = schemas.Dataset{Prefix: set.key}
			}
			if err := src.Walk(ctx, ds, func(it dataset.Item) error {
				if images = append(images, embed.Image{URI: it.Key, Label: it.Label}); len(images) == embedChunk {
					return flush()
				}
				return nil
			}); err != nil {
				return fmt.Errorf("train-head: %s %s: %w", set.name, set.key, err)
			}
		}
		if err := flush(); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "embedded %d %s images: %d rows (weight %g), %d unreadable, %d with a label outside the classes\n",
			n, set.name, rows, set.weight, rejects, skipped)
		spool.rows += rows
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if spool.rows == 0 {
		return errors.New("train-head: no image to train on")
	}
	r := job.Retrain
	fmt.Fprintf(e.stdout, "training a softmax head on %d rows of %d features (%s, lambda %g)\n", spool.rows, spool.dim, r.Mode, r.Lambda)
	h, err := head.Train(spool, head.Options{
		Classes: len(job.Classes), Lambda: r.Lambda, Iters: r.Iters, ClassBalanced: r.ClassBalanced,
		MiniBatch: r.Mode == schemas.MiniBatch, Epochs: r.Epochs, BatchSize: r.BatchSize, LearningRate: r.LearningRate, Seed: job.Seed,
	})
	if err != nil {
		return fmt.Errorf("train-head: %w", err)
	}
	passes := spool.passes
	acc, err := head.Accuracy(h, spool)
	if err != nil {
		return fmt.Errorf("train-head: %w", err)
	}
	fmt.Fprintf(e.stdout, "trained in %d passes over the spool: training accuracy %.4f\n", passes, acc)
	out, err := h.ONNX(target, export)
	if err != nil {
		return fmt.Errorf("train-head: %w", err)
	}
	if err := store.WriteAll(ctx, b, job.Model, out); err != nil {
		return fmt.Errorf("train-head: %w", err)
	}
	fmt.Fprintf(e.stdout, "wrote %s (%d bytes): image %q → features %q → logits %q → %q\n",
		job.Model, len(out), job.Target.Input, export.Features, export.Logits, export.Probabilities)
	return nil
}

// imageReader reads a job's images: one that is gone or forbidden is a
// reject, counted unreadable as a pass counts it, not the trainer's end
// (its manifests are the shards', rejects and all).
func imageReader(buckets *store.Buckets, b *blob.Bucket) embed.ReadFunc {
	return func(ctx context.Context, uri string) ([]byte, error) {
		return activities.ReadImage(ctx, buckets, b, uri)
	}
}

// isPrefix says whether a job's set is an ImageFolder prefix
// (<prefix>/<label>/<file>, as a config's data.*.prefix) rather than a
// manifest: a hand-written job's train may be the folder its images are in.
func isPrefix(key string) bool { return strings.HasSuffix(key, "/") }

// embedChunk is how many of a manifest's images train-head hands the
// embedder at once.
const embedChunk = 1 << 16

// headerOnly reports a CSV manifest without rows (train_only's debug-train
// set), which is no error for a trainer. Its first bytes tell.
func headerOnly(ctx context.Context, b *blob.Bucket, key string) (bool, error) {
	if strings.HasSuffix(strings.ToLower(key), ".parquet") {
		return false, nil
	}
	r, err := b.NewRangeReader(ctx, key, 0, 64<<10, nil)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	return int64(len(data)) == r.Size() && !strings.Contains(strings.TrimSpace(string(data)), "\n"), nil
}

// spoolRows is head.Rows over a local file of rows (label int32, weight
// float32, dim float32s, little-endian), read afresh on every pass.
type spoolRows struct {
	f      *os.File // unlinked: read through it
	name   string
	dim    int
	rows   int
	passes int
	mix    head.Mixer // EachShuffled's, its window kept from epoch to epoch
}

func (s *spoolRows) write(w io.Writer, x []float32, label int, weight float32) error {
	buf := make([]byte, 8+4*len(x))
	binary.LittleEndian.PutUint32(buf, uint32(int32(label)))
	binary.LittleEndian.PutUint32(buf[4:], math.Float32bits(weight))
	for i, v := range x {
		binary.LittleEndian.PutUint32(buf[8+4*i:], math.Float32bits(v))
	}
	_, err := w.Write(buf)
	return err
}

func (s *spoolRows) Dim() int { return s.dim }

func (s *spoolRows) Each(fn func(x []float32, label int, weight float32) error) error {
	return s.each(nil, fn)
}

// spoolChunk is how many rows a shuffled pass reads at a time: it shuffles
// the order of chunks and of the rows within each, mixed over a window of
// rows (head.Mixer), as a pass's own fit shuffles its feature files and
// their rows (for d = 2,048, 32 MiB).
const spoolChunk = 4096

// EachShuffled implements head.Shuffled: without it, every mini-batch
// epoch would read the train rows first and end on debug-train's alone.
func (s *spoolRows) EachShuffled(seed uint64, fn func(x []float32, label int, weight float32) error) error {
	rng := rand.New(rand.NewPCG(seed, 0x5b001))
	s.mix.Reset(rng, s.dim, fn)
	if err := s.each(rng, s.mix.Add); err != nil {
		return err
	}
	return s.mix.Flush()
}

// each reads the spool in chunks, in order, or shuffled with rng.
func (s *spoolRows) each(rng *rand.Rand, fn func(x []float32, label int, weight float32) error) error {
	s.passes++
	f := s.f
	size := 8 + 4*s.dim
	chunks := (s.rows + spoolChunk - 1) / spoolChunk
	order := make([]int, chunks)
	for i := range order {
		order[i] = i
	}
	if rng != nil {
		rng.Shuffle(chunks, func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	buf := make([]byte, min(s.rows, spoolChunk)*size)
	x := make([]float32, s.dim)
	for _, c := range order {
		n := min(spoolChunk, s.rows-c*spoolChunk)
		if _, err := f.ReadAt(buf[:n*size], int64(c)*spoolChunk*int64(size)); err != nil {
			return fmt.Errorf("train-head: spool %s: %w", s.name, err)
		}
		rows := make([]int, n)
		for i := range rows {
			rows[i] = i
		}
		if rng != nil {
			rng.Shuffle(n, func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
		}
		for _, i := range rows {
			row := buf[i*size : (i+1)*size]
			label := int(int32(binary.LittleEndian.Uint32(row)))
			weight := math.Float32frombits(binary.LittleEndian.Uint32(row[4:]))
			for k := range x {
				x[k] = math.Float32frombits(binary.LittleEndian.Uint32(row[8+4*k:]))
			}
			if err := fn(x, label, weight); err != nil {
				return err
			}
		}
	}
	return nil
}
