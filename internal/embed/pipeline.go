// Package embed turns images into feature vectors with an ONNX model.
//
// Embedder reads, decodes and preprocesses images on several goroutines while
// ONNX Runtime infers the previous batch, and flattens each output per image,
// so a classifier's [N,C,1,1] pooling output and a ViT's [N,384] token both
// come back as N vectors.
package embed

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sync"

	"dcd/internal/ortrun"
	"dcd/internal/preprocess"
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

// Batch is the result for consecutive images: Vectors[o] holds output o for
// every image of the batch, Dims[o] values each.
type Batch struct {
	Images  []Image
	Vectors [][]float32
	Dims    []int
}

// Embedder runs images through a Session with the model's preprocessing.
type Embedder struct {
	// Name identifies the model in errors.
	Name      string
	Session   *ortrun.Session
	Spec      preprocess.Spec
	BatchSize int
	// Decoders is how many goroutines read and decode; 0 means GOMAXPROCS.
	Decoders int
}

// ReadFunc fetches an image's encoded bytes.
type ReadFunc func(ctx context.Context, uri string) ([]byte, error)

// prepared is a batch whose input tensor is filled.
type prepared struct {
	images  []Image
	tensor  []float32
	rejects []Reject
	err     error
}

// Embed embeds images in order, calling emit once per batch. Reading and
// decoding the next batch overlaps inference of the current one, so on a
// fast model the decoders, not ORT, set the pace only when they must.
// Images that cannot be read or decoded are returned as rejects, not errors;
// an error is returned for failures that would hit every image (inference,
// emit, cancellation).
func (e *Embedder) Embed(ctx context.Context, images []Image, read ReadFunc, emit func(Batch) error) ([]Reject, error) {
	bs := e.BatchSize
	if bs < 1 {
		bs = 32
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan prepared, 1)
	go func() {
		defer close(ready)
		for start := 0; start < len(images); start += bs {
			p := e.prepare(ctx, images[start:min(start+bs, len(images))], read)
			select {
			case ready <- p:
			case <-ctx.Done():
				return
			}
			if p.err != nil {
				return
			}
		}
	}()

	var rejects []Reject
	for p := range ready {
		if p.err != nil {
			return rejects, p.err
		}
		rejects = append(rejects, p.rejects...)
		if len(p.images) == 0 {
			continue
		}
		b, err := e.run(p)
		if err != nil {
			return rejects, err
		}
		if err := emit(b); err != nil {
			return rejects, err
		}
	}
	return rejects, ctx.Err()
}

// run infers one prepared batch and checks that every output is finite: a
// model producing NaN or Inf is broken, and ranking neighbours by NaN
// distances would be worse than failing.
func (e *Embedder) run(p prepared) (Batch, error) {
	n := len(p.images)
	outs, err := e.Session.Run(ortrun.Tensor{Shape: e.shape(n), Floats: p.tensor})
	if err != nil {
		return Batch{}, err
	}
	b := Batch{Images: p.images}
	for o, t := range outs {
		if len(t.Shape) == 0 || int(t.Shape[0]) != n || t.Floats == nil {
			return Batch{}, fmt.Errorf("embed: %s: output %d has shape %v, want float32 with batch size %d first", e.Name, o, t.Shape, n)
		}
		dim := len(t.Floats) / n
		for j, x := range t.Floats {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				return Batch{}, fmt.Errorf("embed: %s: output %d is %v for image %s: the model produced a non-finite value", e.Name, o, x, p.images[j/dim].URI)
			}
		}
		b.Vectors = append(b.Vectors, t.Floats)
		b.Dims = append(b.Dims, dim)
	}
	return b, nil
}

func (e *Embedder) shape(n int) []int64 {
	s := e.Spec
	if s.Layout == "NHWC" {
		return []int64{int64(n), int64(s.Height), int64(s.Width), int64(s.Channels)}
	}
	return []int64{int64(n), int64(s.Channels), int64(s.Height), int64(s.Width)}
}

// prepare reads and decodes one batch on several goroutines and packs the
// images that decoded into one input tensor, keeping their order.
func (e *Embedder) prepare(ctx context.Context, images []Image, read ReadFunc) prepared {
	size := e.Spec.Size()
	tensor := make([]float32, len(images)*size)
	reasons := make([]string, len(images))
	workers := e.Decoders
	if workers < 1 {
		workers = runtime.GOMAXPROCS(0)
	}
	next := make(chan int)
	var wg sync.WaitGroup
	var fatal error
	var fatalOnce sync.Once
	for w := 0; w < min(workers, len(images)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				data, err := read(ctx, images[i].URI)
				if err != nil {
					if ctx.Err() != nil {
						fatalOnce.Do(func() { fatal = ctx.Err() })
						continue
					}
					reasons[i] = "read: " + err.Error()
					continue
				}
				img, err := preprocess.Decode(data)
				if err != nil {
					reasons[i] = err.Error()
					continue
				}
				if err := e.Spec.Fill(tensor[i*size:(i+1)*size], img); err != nil {
					reasons[i] = err.Error()
				}
			}
		}()
	}
	for i := range images {
		next <- i
	}
	close(next)
	wg.Wait()
	if fatal != nil {
		return prepared{err: fatal}
	}

	// Compact: drop the rejected images' slots so the tensor holds only
	// images that decoded.
	p := prepared{tensor: tensor[:0]}
	for i, im := range images {
		if reasons[i] != "" {
			p.rejects = append(p.rejects, Reject{URI: im.URI, Reason: reasons[i]})
			continue
		}
		p.tensor = append(p.tensor, tensor[i*size:(i+1)*size]...)
		p.images = append(p.images, im)
	}
	return p
}
