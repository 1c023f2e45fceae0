// Package embed turns images into feature vectors with an ONNX model.
//
// Embedder reads, decodes and preprocesses images on several goroutines while
// ONNX Runtime infers the previous batch, and flattens each output per image,
// so a classifier's [N,C,1,1] pooling output and a ViT's [N,384] token both
// come back as N vectors.
package embed

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"

	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
	"dcd/internal/store"
)

// Image is one image to embed: its identity travels with its vectors.
type Image struct {
	ID     int64
	URI    string
	Label  string
	Domain string
}

// Reject is an image that could not be embedded, and why.
type Reject struct {
	URI    string `json:"uri"`
	Reason string `json:"reason"`
}

// readReason begins the reason of an image that could not be read.
const readReason = "read: "

// Unread says whether r's image could not be read (gone, forbidden), as
// opposed to read and not decoded.
func (r Reject) Unread() bool { return strings.HasPrefix(r.Reason, readReason) }

// Batch is the result for consecutive images: Vectors[o] holds output o for
// every embedded image of the batch, Dims[o] values each. Rejects are the
// batch's images that could not be embedded; a batch may have no Images.
type Batch struct {
	Images  []Image
	Vectors [][]float32
	Dims    []int
	Rejects []Reject
}

// Embedder runs images through a Session with the model's preprocessing.
type Embedder struct {
	// Name identifies the model in errors, and Outputs its outputs' tensors
	// (by index when nil).
	Name      string
	Outputs   []string
	Session   *ortrun.Session
	Spec      preprocess.Spec
	BatchSize int
	// FixedBatch, when > 0, is the batch size the model's input is fixed
	// to (exported without a dynamic batch axis). Batches are still read
	// and emitted BatchSize at a time, rounded up to a multiple of it, so
	// as many reads are in flight as for any model (a batch of 1 would
	// leave all but Ahead+1 readers idle); each runs in ORT calls of
	// FixedBatch images, the last filled out with copies of its last image,
	// whose outputs are dropped.
	FixedBatch int
	// Decoders is how many images are decoded and preprocessed at once;
	// 0 means GOMAXPROCS.
	Decoders int
	// Readers is how many images are fetched at once; 0 means
	// DefaultReaders. Reads wait on storage, not on the CPU, so an object
	// store needs many in flight to keep the decoders busy. Reads beyond
	// (Ahead+1)·BatchSize find no image to fetch.
	Readers int
	// Ahead is how many batches are read and decoded ahead of inference;
	// 0 means 2.
	Ahead int
}

// output names output o in errors: its tensor, or its index.
func (e *Embedder) output(o int) string {
	if o < len(e.Outputs) {
		return strconv.Quote(e.Outputs[o])
	}
	return strconv.Itoa(o)
}

// DefaultReaders is the number of concurrent reads when Readers is 0. A
// store that answers each read after 20 ms, as an object store's GET does,
// gives Readers/20 ms images a second: 3,200 at 64 (16 gave 800;
// BenchmarkEmbedRemoteObjects). From local disk, too, 64 embedded the
// demo's one-file-per-image pool 20–40 % faster than 16 did.
const DefaultReaders = 64

// ReadFunc fetches an image's encoded bytes. An error that wraps
// ErrUnreadable (the object is gone, or may not be read) rejects the image
// as unread (Reject.Unread); one that wraps ErrRejected (the object is no
// image to read: too large, a range past its archive's end) rejects it as
// a bad file is; any other error is taken as passing (a network blip, a
// throttled store) and fails the batch, so the activity is retried rather
// than the image being recorded, and cached, as a reject.
type ReadFunc func(ctx context.Context, uri string) ([]byte, error)

// ErrUnreadable and ErrRejected mark read errors that no retry fixes; see
// ReadFunc.
var (
	ErrUnreadable = errors.New("unreadable")
	ErrRejected   = errors.New("rejected")
)

// Embed embeds images in order, calling emit once per batch of BatchSize
// images (default 32, rounded up to a multiple of FixedBatch; the last may
// be short), rejects included. Images stream
// through Readers concurrent reads into Decoders concurrent decodes, which
// fill the input tensors of the next Ahead batches while ORT infers the
// current one, so reading and decoding overlap inference instead of
// alternating with it.
// Images that cannot be read or decoded are returned as rejects, not errors;
// an error is returned for failures that would hit every image (inference,
// emit, cancellation).
func (e *Embedder) Embed(ctx context.Context, images []Image, read ReadFunc, emit func(Batch) error) ([]Reject, error) {
	bs := e.BatchSize
	if bs < 1 {
		bs = 32
	}
	if f := e.FixedBatch; f > 0 {
		bs = (bs + f - 1) / f * f
	}
	decoders := e.Decoders
	if decoders < 1 {
		decoders = runtime.GOMAXPROCS(0)
	}
	readers := e.Readers
	if readers < 1 {
		readers = DefaultReaders
	}
	ahead := e.Ahead
	if ahead < 1 {
		ahead = 2
	}
	spec, err := e.Spec.Prepare()
	if err != nil {
		return nil, fmt.Errorf("embed: %s: preprocess: %w", e.Name, err)
	}
	size := e.Spec.Size()
	nBatches := (len(images) + bs - 1) / bs
	ctx, cancel := context.WithCancel(ctx)
	var workers sync.WaitGroup
	defer func() {
		cancel()
		workers.Wait() // no goroutine touches a batch after Embed returns
	}()

	// Batch b fills slot b%len(slots); the window holds the batch being
	// inferred and the ahead batches after it.
	slots := make([]*pending, min(ahead+1, max(nBatches, 1)))
	for i := range slots {
		n := min(bs, len(images))
		// A fixed batch runs whole: the slot's tensor has room for its
		// last run.
		slots[i] = &pending{tensor: make([]float32, n*size, e.runs(n)*size), reasons: make([]string, n)}
	}
	window := make(chan struct{}, len(slots))
	ready := make([]chan *pending, nBatches)
	for b := range ready {
		ready[b] = make(chan *pending, 1)
	}
	// A job is a run of a batch's images, enough for each reader to get
	// one per batch: as many reads are in flight as with a job per image,
	// for a fraction of the hand-offs between goroutines.
	chunk := max(1, bs/readers)
	work := make(chan job)
	workers.Add(1)
	go func() { // dispatch images in order, one window of batches at a time
		defer workers.Done()
		defer close(work)
		for b := 0; b < nBatches; b++ {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			p := slots[b%len(slots)]
			lo, hi := b*bs, min((b+1)*bs, len(images))
			p.reset(images[lo:hi], ready[b])
			for i := 0; i < len(p.images); i += chunk {
				select {
				case work <- job{p, i, min(i+chunk, len(p.images))}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	decode := make(chan struct{}, decoders)
	held := semaphore.NewWeighted(heldBytes)
	for range readers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := range work {
				for i := j.lo; i < j.hi; i++ {
					var fatal error
					j.p.reasons[i], fatal = e.load(ctx, spec, j.p.images[i].URI, read, decode, held, j.p.tensor[i*size:(i+1)*size])
					j.p.fail(fatal)
				}
				j.p.finish(j.hi - j.lo)
			}
		}()
	}

	var rejects []Reject
	for b := 0; b < nBatches; b++ {
		var p *pending
		select {
		case p = <-ready[b]:
		case <-ctx.Done():
			return rejects, ctx.Err()
		}
		if p.fatal != nil {
			return rejects, p.fatal
		}
		imgs, tensor, rj := p.compact(size)
		rejects = append(rejects, rj...)
		batch := Batch{Rejects: rj}
		if len(imgs) > 0 {
			var err error
			if batch, err = e.run(spec.Spec(), imgs, tensor); err != nil {
				return rejects, err
			}
			batch.Rejects = rj
		}
		if err := emit(batch); err != nil {
			return rejects, err
		}
		<-window // the slot is free: ORT copied its outputs, emit has returned
	}
	return rejects, ctx.Err()
}

// job is images lo up to hi of a pending batch.
type job struct {
	p      *pending
	lo, hi int
}

// pending is a batch being read and decoded into its input tensor.
type pending struct {
	images  []Image
	tensor  []float32
	reasons []string // per image; "" when it decoded
	left    atomic.Int32
	fatal   error
	fatalMu sync.Mutex
	ready   chan *pending
}

func (p *pending) reset(images []Image, ready chan *pending) {
	p.images, p.ready, p.fatal = images, ready, nil
	clear(p.reasons)
	p.left.Store(int32(len(images)))
}

// fail records a fatal error (the context ended), which fails the batch.
func (p *pending) fail(fatal error) {
	if fatal != nil {
		p.fatalMu.Lock()
		if p.fatal == nil {
			p.fatal = fatal
		}
		p.fatalMu.Unlock()
	}
}

// finish counts n more images loaded, their reasons recorded ("" when the
// image is in the tensor); the last hands the batch on.
func (p *pending) finish(n int) {
	if p.left.Add(int32(-n)) == 0 {
		p.ready <- p
	}
}

// compact drops the rejected images' slots so the tensor holds only the
// images that decoded, in order.
func (p *pending) compact(size int) ([]Image, []float32, []Reject) {
	var imgs []Image
	var rejects []Reject
	tensor := p.tensor[:0]
	for i, im := range p.images {
		if p.reasons[i] != "" {
			rejects = append(rejects, Reject{URI: im.URI, Reason: p.reasons[i]})
			continue
		}
		if len(tensor) != i*size {
			tensor = append(tensor, p.tensor[i*size:(i+1)*size]...)
		} else {
			tensor = tensor[:(i+1)*size]
		}
		imgs = append(imgs, im)
	}
	return imgs, tensor, rejects
}

// heldBytes bounds the bytes of whole images an embedding's readers hold,
// read and not yet decoded: photographs of a few MB pass side by side,
// large files (a video in a class folder, up to MaxImageBytes each) one
// or a few at a time.
var heldBytes int64 = 1 << 30 // a variable for the tests

// load reads one image, then decodes it into dst holding one of the
// decode tokens. A read of a whole object first reserves its size of held
// (store.WithReserve), given back once the image is decoded. It returns a
// reject reason, or a fatal error when the context ended.
func (e *Embedder) load(ctx context.Context, spec preprocess.Prepared, uri string, read ReadFunc, decode chan struct{}, held *semaphore.Weighted, dst []float32) (string, error) {
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	var reserved int64
	defer func() { held.Release(reserved) }()
	data, err := read(store.WithReserve(ctx, func(ctx context.Context, n int64) error {
		n = min(max(n, 1), heldBytes) // a file past the budget takes all of it
		if err := held.Acquire(ctx, n); err != nil {
			return err
		}
		reserved += n
		return nil
	}), uri)
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		switch {
		case errors.Is(err, ErrRejected):
			return err.Error(), nil
		case !errors.Is(err, ErrUnreadable):
			return "", fmt.Errorf("embed: read %s: %w", uri, err)
		}
		return readReason + err.Error(), nil
	}
	select {
	case decode <- struct{}{}:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	defer func() { <-decode }()
	if err := safeDecodeFill(spec, dst, data); err != nil {
		return err.Error(), nil
	}
	return "", nil
}

// safeDecodeFill is decodeFill with a panic (a decoder's bug that an image
// reached) made that image's reject: on this goroutine, which Temporal does
// not recover, it would end the worker, and the retry the next one.
func safeDecodeFill(spec preprocess.Prepared, dst []float32, data []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("decode: the decoder failed on this image (%v): a bug, please report it with the image", p)
		}
	}()
	return decodeFill(spec, dst, data)
}

// decodeFill decodes an image into dst; a test replaces it.
var decodeFill = preprocess.Prepared.DecodeFill

// OutputError is returned by Embed when the model's output is unusable: not
// float32 with the batch first, or not finite. Running again cannot fix it.
type OutputError struct{ Msg string }

func (e *OutputError) Error() string { return e.Msg }

// run infers one prepared batch and checks that every output is finite: a
// model producing NaN or Inf is broken, and ranking neighbours by NaN
// distances would be worse than failing. A model of a fixed batch runs it
// FixedBatch images at a time; tensor has room for the last run's filling
// (runs).
func (e *Embedder) run(spec preprocess.Spec, images []Image, tensor []float32) (Batch, error) {
	n := len(images)
	size := len(tensor) / n
	step := n
	if e.FixedBatch > 0 {
		step = e.FixedBatch
		tensor = tensor[:e.runs(n)*size]
		last := tensor[(n-1)*size : n*size]
		for r := n; r < len(tensor)/size; r++ {
			copy(tensor[r*size:], last)
		}
	}
	b := Batch{Images: images}
	for lo := 0; lo < n; lo += step {
		hi := min(lo+step, n)
		outs, err := e.Session.Run(ortrun.Tensor{Shape: shape(spec, step), Floats: tensor[lo*size : (lo+step)*size]})
		if err != nil {
			return Batch{}, err
		}
		for o, t := range outs {
			if len(t.Shape) == 0 || int(t.Shape[0]) != step || t.Floats == nil {
				return Batch{}, &OutputError{fmt.Sprintf("embed: %s: output %s has shape %v, want float32 with batch size %d first", e.Name, e.output(o), t.Shape, step)}
			}
			dim := len(t.Floats) / step
			t.Floats = t.Floats[:(hi-lo)*dim]
			for j, x := range t.Floats {
				// x-x is 0 for every finite x and NaN for ±Inf and NaN: one
				// test per value on the path every batch waits on.
				if x-x != 0 {
					return Batch{}, &OutputError{fmt.Sprintf("embed: %s: output %s is %v for image %s: the model produced a non-finite value", e.Name, e.output(o), x, images[lo+j/dim].URI)}
				}
			}
			switch {
			case step == n: // the whole batch in one run: its output as it is
				b.Vectors = append(b.Vectors, t.Floats)
				b.Dims = append(b.Dims, dim)
			case lo == 0:
				b.Vectors = append(b.Vectors, append(make([]float32, 0, n*dim), t.Floats...))
				b.Dims = append(b.Dims, dim)
			case dim != b.Dims[o]:
				return Batch{}, &OutputError{fmt.Sprintf("embed: %s: output %d has %d values per image at image %s, %d before it in the batch", e.Name, o, dim, images[lo].URI, b.Dims[o])}
			default:
				b.Vectors[o] = append(b.Vectors[o], t.Floats...)
			}
		}
	}
	return b, nil
}

// runs is how many images' room n images take in ORT's runs: n, or n
// rounded up to a whole FixedBatch.
func (e *Embedder) runs(n int) int {
	if f := e.FixedBatch; f > 0 {
		return (n + f - 1) / f * f
	}
	return n
}

// shape is the input tensor's shape for n images of spec (defaults
// applied: a layout written "nhwc" is NHWC).
func shape(s preprocess.Spec, n int) []int64 {
	if s.Layout == preprocess.LayoutNHWC {
		return []int64{int64(n), int64(s.Height), int64(s.Width), int64(s.Channels)}
	}
	return []int64{int64(n), int64(s.Channels), int64(s.Height), int64(s.Width)}
}
