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
