// Package head trains and applies a linear softmax classification head on
// frozen image features.
//
// Data-centric debugging retrains only the last layer of a classifier on the
// union of the clean train features and a weakly labelled debug set, many
// times over, so the head has to be cheap to fit, deterministic (two runs on
// the same rows must be comparable byte for byte) and able to read its
// training data as a stream, because the debug pool can grow to about a
// million rows of up to 2048 dimensions. Training is full-batch L-BFGS on a
// convex objective, which gives a unique optimum regardless of row order
// within the limits of floating point, and each iteration is one pass over
// the Rows interface.
//
// Features are standardised with the training mean and standard deviation
// before the linear map; the standardiser is part of the Head so that callers
// never need to remember to apply it.
package head

import (
	"errors"
	"fmt"
	"math"
)

// Rows is the training data, read possibly many times (one pass per
// evaluation of the objective).
type Rows interface {
	Dim() int
	// Each calls fn for every row in a fixed order; x is only valid during
	// the call. Weight is a per-row sample weight (1 normally). An error
	// returned by fn stops the pass and is returned by Each.
	Each(fn func(x []float32, label int, weight float32) error) error
}

// Slice is an in-memory Rows.
type Slice struct {
	X [][]float32
	Y []int
	W []float32 // nil means every row has weight 1
}

// Dim returns the length of the first row, or 0 when there are no rows.
func (s *Slice) Dim() int {
	if len(s.X) == 0 {
		return 0
	}
	return len(s.X[0])
}

// Each implements Rows.
func (s *Slice) Each(fn func(x []float32, label int, weight float32) error) error {
	if len(s.Y) != len(s.X) {
		return fmt.Errorf("head: slice has %d rows but %d labels", len(s.X), len(s.Y))
	}
	if s.W != nil && len(s.W) != len(s.X) {
		return fmt.Errorf("head: slice has %d rows but %d weights", len(s.X), len(s.W))
	}
	for i, x := range s.X {
		w := float32(1)
		if s.W != nil {
			w = s.W[i]
		}
		if err := fn(x, s.Y[i], w); err != nil {
			return err
		}
	}
	return nil
}

// Head is a standardiser plus softmax regression:
// logits = W·((x-Mean)/Std) + B.
type Head struct {
	Classes int       `json:"classes"`
	Dim     int       `json:"dim"`
	Mean    []float32 `json:"mean"`
	Std     []float32 `json:"std"`
	W       []float32 `json:"w"` // Classes*Dim, row-major by class
	B       []float32 `json:"b"`
}

// Check says whether h is whole: every slice as long as Classes and Dim
// make it, every Std above 0. A head read from storage (head.json) is
// checked before use, where a damaged one would index out of range.
func (h *Head) Check() error {
	switch {
	case h.Classes < 1 || h.Dim < 1:
		return fmt.Errorf("head: %d classes of %d features", h.Classes, h.Dim)
	case len(h.Mean) != h.Dim || len(h.Std) != h.Dim:
		return fmt.Errorf("head: %d means and %d stds for %d features", len(h.Mean), len(h.Std), h.Dim)
	case len(h.W) != h.Classes*h.Dim || len(h.B) != h.Classes:
		return fmt.Errorf("head: %d weights and %d biases for %d classes of %d features", len(h.W), len(h.B), h.Classes, h.Dim)
	}
	for j, sd := range h.Std {
		if !(sd > 0) {
			return fmt.Errorf("head: feature %d has std %v, want > 0", j, sd)
		}
	}
	return nil
}

// Logits writes the Classes logits for x into dst, reusing its storage when
// it is large enough, and returns it. It panics when len(x) != h.Dim, as
// indexing would, because a silent truncation would give wrong predictions.
func (h *Head) Logits(x []float32, dst []float32) []float32 {
	if len(x) != h.Dim {
		panic(fmt.Sprintf("head: input has dim %d, want %d", len(x), h.Dim))
	}
	if cap(dst) < h.Classes {
		dst = make([]float32, h.Classes)
	}
	dst = dst[:h.Classes]
	// Accumulate in float64, like the training objective, and visit each
	// feature once so it is standardised once rather than once per class.
	var stack [32]float64
	acc := stack[:0]
	if h.Classes <= len(stack) {
		acc = stack[:h.Classes]
	} else {
		acc = make([]float64, h.Classes)
	}
	for c := range acc {
		acc[c] = float64(h.B[c])
	}
	for j, v := range x {
		z := (float64(v) - float64(h.Mean[j])) / float64(h.Std[j])
		for c := range acc {
			acc[c] += float64(h.W[c*h.Dim+j]) * z
		}
	}
	for c, v := range acc {
		dst[c] = float32(v)
	}
	return dst
}

// Predict returns the class with the largest logit; ties go to the lowest
// class index so that the result is deterministic.
func (h *Head) Predict(x []float32) int {
	var buf [32]float32
	l := h.Logits(x, buf[:0])
	best := 0
	for c := 1; c < len(l); c++ {
		if l[c] > l[best] {
			best = c
		}
	}
	return best
}

// Accuracy returns the share of rows whose argmax equals the label (ignores
// weights).
func Accuracy(h *Head, rows Rows) (float64, error) {
	var n, correct int
	var buf []float32
	err := rows.Each(func(x []float32, label int, _ float32) error {
		if len(x) != h.Dim {
			return fmt.Errorf("head: row %d: dim %d, want %d", n, len(x), h.Dim)
		}
		buf = h.Logits(x, buf)
		best := 0
		for c := 1; c < len(buf); c++ {
			if buf[c] > buf[best] {
				best = c
			}
		}
		if best == label {
			correct++
		}
		n++
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("head: no rows")
	}
	return float64(correct) / float64(n), nil
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
