package head

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"

	"gonum.org/v1/gonum/floats"
)

// Options controls Train. Zero values select the documented defaults.
//
// The objective is the weighted mean cross-entropy plus Lambda/2*||W||^2:
//
//	sum_i w_i*CE_i / sum_i w_i + Lambda/2 * sum W^2
//
// where w_i is the row weight times the class-balance factor. Biases are not
// penalised so that class priors are learnt freely.
type Options struct {
	Classes int
	// Lambda is the L2 strength on the weights (not the bias); 0 means
	// 0.01. Because features are standardised it is comparable across
	// feature extractors. There is no way to ask for exactly 0 since the
	// unregularised problem has no optimum on separable data; use a tiny
	// positive value instead.
	Lambda float64
	// Iters is the maximum number of L-BFGS iterations; 0 means 300.
	Iters int
	// Tol stops training once the largest absolute gradient component is
	// at most Tol; 0 means 1e-5. The max-norm keeps the meaning of Tol
	// independent of Classes*Dim.
	Tol float64
	// ClassBalanced weights each row of class c by n/(Classes*n_c), with n
	// and n_c the summed row weights, so that every present class
	// contributes equally to the loss.
	ClassBalanced bool

	// MiniBatch trains with Adam on mini-batches, one pass over the rows
	// per epoch, instead of full-batch L-BFGS (one pass per objective
	// evaluation). Rows that implement Shuffled are read in a new seeded
	// order every epoch. Iters and Tol do not apply.
	MiniBatch bool
	// Epochs is the number of mini-batch passes; 0 means 20.
	Epochs int
	// BatchSize is the rows per Adam step; 0 means 256.
	BatchSize int
	// LearningRate is Adam's initial step, decayed to 0 along a cosine
	// over the epochs; 0 means 0.01.
	LearningRate float64
	// Seed drives the shuffles.
	Seed uint64
}

const (
	stdFloor = 1e-6
	// blockRows rows are copied out of Each and handed to a worker as one
	// unit; large enough to amortise channel traffic, small enough that
	// small data sets still spread over several shards.
	blockRows = 64
	// nShards fixes how the gradient sum is split, independently of the
	// number of CPUs, so that results are bit-identical whatever the
	// CPU count: block k always lands in shard k%nShards, each shard is
	// summed in block order, and shards are summed in index order. (Not
	// across CPU kinds: math.Exp takes an FMA path where the CPU has
	// one, and arm64 fuses multiply-adds, each rounding otherwise.)
	nShards = 8
)

// Train fits the standardiser (mean/std over the rows, std floor 1e-6) and the
// weights; deterministic for the same rows and options.
func Train(rows Rows, opt Options) (*Head, error) {
	if opt.Classes < 2 {
		return nil, fmt.Errorf("head: classes must be at least 2, got %d", opt.Classes)
	}
	if opt.Lambda == 0 {
		opt.Lambda = 0.01
	}
	if opt.Lambda < 0 || !isFinite(opt.Lambda) {
		return nil, fmt.Errorf("head: lambda must be positive, got %v", opt.Lambda)
	}
	if opt.Iters == 0 {
		opt.Iters = 300
	}
	if opt.Iters < 0 {
		return nil, fmt.Errorf("head: iters must be positive, got %d", opt.Iters)
	}
	if opt.Tol == 0 {
		opt.Tol = 1e-5
	}
	if opt.Tol < 0 || math.IsNaN(opt.Tol) {
		return nil, fmt.Errorf("head: tol must be positive, got %v", opt.Tol)
	}
	d := rows.Dim()
	if d <= 0 {
		return nil, fmt.Errorf("head: dim must be positive, got %d", d)
	}
	st, err := scan(rows, d, opt.Classes)
	if err != nil {
		return nil, err
	}

	C := opt.Classes
	e := &evaluator{
		rows:    rows,
		d:       d,
		classes: C,
		mean:    st.mean,
		invStd:  make([]float64, d),
		classW:  make([]float64, C),
		lambda:  opt.Lambda,
	}
	for j, s := range st.std {
		e.invStd[j] = 1 / s
	}
	var wsum float64
	for c := range C {
		e.classW[c] = 1
		if opt.ClassBalanced && st.classSum[c] > 0 {
			e.classW[c] = st.total / (float64(C) * st.classSum[c])
		}
		wsum += e.classW[c] * st.classSum[c]
	}
	if !(wsum > 0) {
		return nil, errors.New("head: row weights sum to zero")
	}
	e.invWsum = 1 / wsum

	theta := make([]float64, C*d+C)
	if opt.MiniBatch {
		if err := e.adam(theta, opt, st.weighted); err != nil {
			return nil, err
		}
	} else if err := minimize(theta, e.eval, opt.Iters, opt.Tol); err != nil {
		return nil, err
	}

	h := &Head{
		Classes: C,
		Dim:     d,
		Mean:    make([]float32, d),
		Std:     make([]float32, d),
		W:       make([]float32, C*d),
		B:       make([]float32, C),
	}
	for j := range d {
		h.Mean[j] = float32(st.mean[j])
		h.Std[j] = float32(st.std[j])
	}
	for i := range h.W {
		h.W[i] = float32(theta[i])
	}
	for c := range C {
		h.B[c] = float32(theta[C*d+c])
	}
	return h, nil
}

type stats struct {
	mean, std []float64
	classSum  []float64 // summed row weights per class
	total     float64
	weighted  int // rows of weight > 0
}

// scan validates every row once up front, so that later passes can only fail
// if the Rows changes underneath, and computes the standardiser with
// Welford's update, which stays accurate when features have a large offset.
func scan(rows Rows, d, classes int) (*stats, error) {
	st := &stats{
		mean:     make([]float64, d),
		std:      make([]float64, d),
		classSum: make([]float64, classes),
	}
	m2 := st.std
	n := 0
	err := rows.Each(func(x []float32, label int, w float32) error {
		if err := checkRow(n, x, label, w, d, classes); err != nil {
			return err
		}
		n++
		inv := 1 / float64(n)
		for j, v := range x {
			fv := float64(v)
			if !isFinite(fv) {
				return fmt.Errorf("head: row %d: non-finite value at column %d", n-1, j)
			}
			delta := fv - st.mean[j]
			st.mean[j] += delta * inv
			m2[j] += delta * (fv - st.mean[j])
		}
		st.classSum[label] += float64(w)
		st.total += float64(w)
		if w > 0 {
			st.weighted++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("head: no rows")
	}
	for j := range d {
		s := math.Sqrt(m2[j] / float64(n))
		if !(s >= stdFloor) {
			s = stdFloor
		}
		// Round through float32 so training uses exactly the
		// standardiser that the Head stores.
		st.std[j] = float64(float32(s))
		st.mean[j] = float64(float32(st.mean[j]))
	}
	return st, nil
}

func checkRow(i int, x []float32, label int, w float32, d, classes int) error {
	if len(x) != d {
		return fmt.Errorf("head: row %d: dim %d, want %d", i, len(x), d)
	}
	if label < 0 || label >= classes {
		return fmt.Errorf("head: row %d: label %d out of range [0,%d)", i, label, classes)
	}
	if !(w >= 0) || math.IsInf(float64(w), 0) {
		return fmt.Errorf("head: row %d: weight %v must be finite and non-negative", i, w)
	}
	return nil
}

// evaluator computes the objective and its gradient with one pass over the
// rows. Each stays sequential (Rows need not be safe for concurrent use);
// the callback only copies rows into blocks and the arithmetic runs on
// worker goroutines.
type evaluator struct {
	rows    Rows
	d       int
	classes int
	mean    []float64
	invStd  []float64
	classW  []float64
	invWsum float64
	lambda  float64

	shards [nShards]shard
	free   chan *block
}

type block struct {
	x     []float32 // blockRows*d
	label []int
	w     []float64 // effective weight: row weight times class factor
	n     int
	shard int
}

type shard struct {
	grad []float64 // classes*d weights then classes biases
	loss float64
}

func (e *evaluator) workers() int {
	return max(1, min(runtime.GOMAXPROCS(0), nShards))
}

func (e *evaluator) init() {
	if e.free != nil {
		return
	}
	np := len(e.classW)*e.d + len(e.classW)
	for s := range e.shards {
		e.shards[s].grad = make([]float64, np)
	}
	nb := 3 * e.workers()
	e.free = make(chan *block, nb)
	for range nb {
		e.free <- &block{
			x:     make([]float32, blockRows*e.d),
			label: make([]int, blockRows),
			w:     make([]float64, blockRows),
		}
	}
}

func (e *evaluator) eval(theta, grad []float64) (float64, error) {
	e.init()
	d, C := e.d, e.classes
	for s := range e.shards {
		clear(e.shards[s].grad)
		e.shards[s].loss = 0
	}

	nw := e.workers()
	in := make([]chan *block, nw)
	var wg sync.WaitGroup
	for g := range nw {
		in[g] = make(chan *block, 2)
		wg.Add(1)
		go func(ch chan *block) {
			defer wg.Done()
			k := newKernel(d, C)
			for b := range ch {
				k.run(e, theta, b, &e.shards[b.shard])
				e.free <- b
			}
		}(in[g])
	}

	var cur *block
	nblocks, i := 0, 0
	send := func() {
		cur.shard = nblocks % nShards
		in[cur.shard%nw] <- cur
		nblocks++
		cur = nil
	}
	err := e.rows.Each(func(x []float32, label int, w float32) error {
		if err := checkRow(i, x, label, w, d, C); err != nil {
			return err
		}
		i++
		if w == 0 {
			return nil
		}
		if cur == nil {
			cur = <-e.free
			cur.n = 0
		}
		copy(cur.x[cur.n*d:(cur.n+1)*d], x)
		cur.label[cur.n] = label
		cur.w[cur.n] = float64(w) * e.classW[label]
		cur.n++
		if cur.n == blockRows {
			send()
		}
		return nil
	})
	if cur != nil {
		if err == nil {
			send()
		} else {
			e.free <- cur
		}
	}
	for _, ch := range in {
		close(ch)
	}
	wg.Wait()
	if err != nil {
		return 0, err
	}

	clear(grad)
	var loss float64
	for s := range e.shards {
		floats.Add(grad, e.shards[s].grad)
		loss += e.shards[s].loss
	}
	loss *= e.invWsum
	floats.Scale(e.invWsum, grad)
	W := theta[:C*d]
	loss += 0.5 * e.lambda * floats.Dot(W, W)
	floats.AddScaled(grad[:C*d], e.lambda, W)
	return loss, nil
}

// kernel holds one worker's scratch space.
type kernel struct {
	z      []float64
	logits []float64
}

func newKernel(d, classes int) *kernel {
	return &kernel{z: make([]float64, d), logits: make([]float64, classes)}
}

// run adds the weighted cross-entropy and its gradient for the rows of b
// into sh. The dot products and updates go through gonum's assembly kernels,
// which are the bulk of the training time.
func (k *kernel) run(e *evaluator, theta []float64, b *block, sh *shard) {
	d, C := e.d, e.classes
	W, B := theta[:C*d], theta[C*d:]
	gW, gB := sh.grad[:C*d], sh.grad[C*d:]
	z, l := k.z, k.logits
	mean, invStd := e.mean[:d], e.invStd[:d]
	for r := range b.n {
		x := b.x[r*d : (r+1)*d]
		for j := range z {
			z[j] = (float64(x[j]) - mean[j]) * invStd[j]
		}
		mx := math.Inf(-1)
		for c := range C {
			l[c] = B[c] + floats.Dot(W[c*d:(c+1)*d], z)
			mx = max(mx, l[c])
		}
		y, w := b.label[r], b.w[r]
		ly := l[y] - mx
		var sum float64
		for c := range C {
			l[c] = math.Exp(l[c] - mx)
			sum += l[c]
		}
		sh.loss += w * (math.Log(sum) - ly)
		inv := w / sum
		for c := range C {
			g := l[c] * inv
			if c == y {
				g -= w
			}
			gB[c] += g
			floats.AddScaled(gW[c*d:(c+1)*d], g, z)
		}
	}
}
