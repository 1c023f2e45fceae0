package head

import (
	"math"
	"math/rand/v2"

	"gonum.org/v1/gonum/floats"
)

// Shuffled is Rows that can also be read in a seeded random order, which
// mini-batch training asks for once per epoch. Rows streamed from storage
// typically shuffle the order of their files and the rows within each,
// mixed over a window of rows (Mixer).
type Shuffled interface {
	Rows
	// EachShuffled is Each in an order that depends only on seed.
	EachShuffled(seed uint64, fn func(x []float32, label int, weight float32) error) error
}

// EachShuffled implements Shuffled with a seeded permutation of the rows.
func (s *Slice) EachShuffled(seed uint64, fn func(x []float32, label int, weight float32) error) error {
	perm := rand.New(rand.NewPCG(seed, 0x5eed)).Perm(len(s.X))
	sh := &Slice{X: make([][]float32, len(s.X)), Y: make([]int, len(s.Y))}
	if len(s.Y) != len(s.X) {
		return s.Each(fn) // reports the mismatch
	}
	if s.W != nil {
		sh.W = make([]float32, len(s.W))
	}
	for i, p := range perm {
		sh.X[i], sh.Y[i] = s.X[p], s.Y[p]
		if s.W != nil && p < len(s.W) {
			sh.W[i] = s.W[p]
		}
	}
	return sh.Each(fn)
}

// adam minimises the objective with Adam over mini-batches: each step's
// gradient is the batch's estimate of the objective's (its rows' weighted
// cross-entropy gradients, over the weight of all rows, times how many
// rows of weight there are for each in the batch) plus the L2 term, and
// the step size follows a cosine from LearningRate to 0. Not the batch's
// own weighted mean: rows that come in shuffled files (a shard's
// features) may still fill a batch from one file, all train or all
// debug-train, where the weight would divide out and debug_weight 5 train
// as 1. weighted counts
// the rows of weight > 0 (the others are left out of batches).
func (e *evaluator) adam(theta []float64, opt Options, weighted int) error {
	epochs := opt.Epochs
	if epochs <= 0 {
		epochs = 20
	}
	bs := opt.BatchSize
	if bs <= 0 {
		bs = 256
	}
	bs = min(bs, max(weighted, 1)) // a batch of more is all the rows, and held at once
	lr := opt.LearningRate
	if lr <= 0 {
		lr = 0.01
	}
	const beta1, beta2, eps = 0.9, 0.999, 1e-8
	d, C := e.d, e.classes
	n := len(theta)
	m1, m2 := make([]float64, n), make([]float64, n)
	grad := make([]float64, n)
	sh := &shard{grad: make([]float64, n)}
	k := newKernel(d, C)
	b := &block{x: make([]float32, bs*d), label: make([]int, bs), w: make([]float64, bs)}
	total := float64(epochs * ((weighted + bs - 1) / bs)) // the steps: batches hold rows of weight only
	step := 0
	flush := func() {
		if b.n == 0 {
			return
		}
		clear(sh.grad)
		sh.loss = 0
		k.run(e, theta, b, sh)
		scale := float64(weighted) * e.invWsum / float64(b.n)
		b.n = 0
		copy(grad, sh.grad)
		floats.Scale(scale, grad)
		floats.AddScaled(grad[:C*d], e.lambda, theta[:C*d])
		step++
		rate := lr * 0.5 * (1 + math.Cos(math.Pi*min(float64(step-1)/total, 1)))
		c1 := 1 - math.Pow(beta1, float64(step))
		c2 := 1 - math.Pow(beta2, float64(step))
		for i, g := range grad {
			m1[i] = beta1*m1[i] + (1-beta1)*g
			m2[i] = beta2*m2[i] + (1-beta2)*g*g
			theta[i] -= rate * (m1[i] / c1) / (math.Sqrt(m2[i]/c2) + eps)
		}
	}
	i := 0
	add := func(x []float32, label int, w float32) error {
		if err := checkRow(i, x, label, w, d, C); err != nil {
			return err
		}
		i++
		if w == 0 {
			return nil
		}
		copy(b.x[b.n*d:(b.n+1)*d], x)
		b.label[b.n] = label
		b.w[b.n] = float64(w) * e.classW[label]
		b.n++
		if b.n == bs {
			flush()
		}
		return nil
	}
	sr, shuffled := e.rows.(Shuffled)
	for epoch := range epochs {
		i = 0
		var err error
		if shuffled {
			err = sr.EachShuffled(opt.Seed*1000003+uint64(epoch), add)
		} else {
			err = e.rows.Each(add)
		}
		if err != nil {
			return err
		}
		flush()
	}
	return nil
}
