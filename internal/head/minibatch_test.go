package head

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Mini-batch Adam reaches about the accuracy of full-batch L-BFGS, and the
// same seed gives the same head bit for bit.
func TestMiniBatchMatchesFullBatch(t *testing.T) {
	centres, train := blobs(5, 5, 20, repeat(600, 5), 0.6)
	test := sample(rand.New(rand.NewPCG(6, 6)), centres, repeat(300, 5))
	full, err := Train(train, Options{Classes: 5})
	if err != nil {
		t.Fatal(err)
	}
	opt := Options{Classes: 5, MiniBatch: true, Epochs: 15, BatchSize: 64, Seed: 3}
	mb, err := Train(train, opt)
	if err != nil {
		t.Fatal(err)
	}
	af, am := mustAcc(t, full, test), mustAcc(t, mb, test)
	t.Logf("held-out accuracy: full batch %.4f, mini-batch %.4f", af, am)
	if am < af-0.02 {
		t.Errorf("mini-batch accuracy %.4f is more than 2 points below full batch's %.4f", am, af)
	}
	again, err := Train(train, opt)
	if err != nil {
		t.Fatal(err)
	}
	for i := range mb.W {
		if math.Float32bits(mb.W[i]) != math.Float32bits(again.W[i]) {
			t.Fatalf("W[%d] differs between two runs with one seed: %v vs %v", i, mb.W[i], again.W[i])
		}
	}
	opt.Seed = 4
	other, err := Train(train, opt)
	if err != nil {
		t.Fatal(err)
	}
	same := true
	for i := range mb.W {
		same = same && mb.W[i] == other.W[i]
	}
	if same {
		t.Error("another seed gave the same head: the rows were not shuffled")
	}
}

// rowsOnly hides Slice's EachShuffled.
type rowsOnly struct{ s *Slice }

func (r rowsOnly) Dim() int { return r.s.Dim() }

func (r rowsOnly) Each(fn func(x []float32, label int, weight float32) error) error {
	return r.s.Each(fn)
}

// Rows that cannot shuffle are read in their own order every epoch.
func TestMiniBatchWithoutShuffle(t *testing.T) {
	centres, train := blobs(7, 3, 10, repeat(300, 3), 1)
	test := sample(rand.New(rand.NewPCG(8, 8)), centres, repeat(200, 3))
	var r Rows = rowsOnly{train}
	if _, ok := r.(Shuffled); ok {
		t.Fatal("rowsOnly should not be Shuffled")
	}
	h, err := Train(r, Options{Classes: 3, MiniBatch: true, Epochs: 5})
	if err != nil {
		t.Fatal(err)
	}
	if a := mustAcc(t, h, test); a < 0.9 {
		t.Errorf("accuracy %.4f, want ≥ 0.9", a)
	}
}

// Row weights and the class balance apply in mini-batch mode: a class whose
// rows weigh 0 is never predicted for the rows that count.
func TestMiniBatchWeights(t *testing.T) {
	_, train := blobs(9, 3, 8, repeat(200, 3), 1)
	train.W = make([]float32, len(train.Y))
	for i, y := range train.Y {
		if y != 2 {
			train.W[i] = 1
		}
	}
	h, err := Train(train, Options{Classes: 3, MiniBatch: true, Epochs: 30, BatchSize: 32, LearningRate: 0.05, ClassBalanced: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range train.X {
		if train.Y[i] != 2 && h.Predict(x) == 2 {
			t.Fatal("predicted a class whose rows all weigh 0")
		}
	}
}

// files are Rows shuffled as a pass's features are: the order of the
// files, and the rows within each, so that a batch is mostly one file's.
type files []*Slice

func (f files) Dim() int { return f[0].Dim() }

func (f files) Each(fn func(x []float32, label int, weight float32) error) error {
	for _, s := range f {
		if err := s.Each(fn); err != nil {
			return err
		}
	}
	return nil
}

func (f files) EachShuffled(seed uint64, fn func(x []float32, label int, weight float32) error) error {
	for i, p := range rand.New(rand.NewPCG(seed, 1)).Perm(len(f)) {
		if err := f[p].EachShuffled(seed+uint64(i), fn); err != nil {
			return err
		}
	}
	return nil
}

// A debug-train file's weight counts though every batch holds one file's
// rows: its rows, which the train rows' classes contradict, are fitted
// more with debug_weight 8 than with 1, as full-batch training fits them.
func TestMiniBatchWeightAcrossFiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	train, debug := &Slice{}, &Slice{}
	for i := range 1024 { // class 0 left of 0, class 1 right
		c := i % 2
		train.X = append(train.X, []float32{float32(2*c-1) + float32(rng.NormFloat64()), float32(rng.NormFloat64())})
		train.Y = append(train.Y, c)
	}
	for range 256 { // class 0, where class 1's rows are
		debug.X = append(debug.X, []float32{0.6 + 0.3*float32(rng.NormFloat64()), float32(rng.NormFloat64())})
		debug.Y = append(debug.Y, 0)
	}
	fitted := func(weight float32, mini bool) float64 {
		debug.W = make([]float32, len(debug.Y))
		for i := range debug.W {
			debug.W[i] = weight
		}
		train.W = nil
		h, err := Train(files{train, debug}, Options{Classes: 2, MiniBatch: mini, Epochs: 30, BatchSize: 128, LearningRate: 0.05, Seed: 5})
		if err != nil {
			t.Fatal(err)
		}
		return mustAcc(t, h, debug)
	}
	full1, full8, mini1, mini8 := fitted(1, false), fitted(8, false), fitted(1, true), fitted(8, true)
	t.Logf("debug rows fitted: full batch %.3f (weight 1), %.3f (8); mini-batch %.3f, %.3f", full1, full8, mini1, mini8)
	if full8-full1 < 0.2 {
		t.Fatalf("full batch fits the debug rows %.3f with weight 8, %.3f with 1: the data shows nothing", full8, full1)
	}
	if mini8-mini1 < 0.5*(full8-full1) || math.Abs(mini8-full8) > 0.1 {
		t.Errorf("mini-batch fits the debug rows %.3f with weight 8, %.3f with 1; full batch %.3f and %.3f", mini8, mini1, full8, full1)
	}
}
