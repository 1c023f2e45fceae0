package head

import (
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
)

// blobs draws n rows per class around random centres with unit noise; sep
// scales the centres and so controls how separable the classes are.
func blobs(seed uint64, classes, d int, perClass []int, sep float64) ([][]float64, *Slice) {
	r := rand.New(rand.NewPCG(seed, 1))
	centres := make([][]float64, classes)
	for c := range centres {
		centres[c] = make([]float64, d)
		for j := range d {
			centres[c][j] = sep * r.NormFloat64()
		}
	}
	return centres, sample(r, centres, perClass)
}

func sample(r *rand.Rand, centres [][]float64, perClass []int) *Slice {
	s := &Slice{}
	for c, n := range perClass {
		for range n {
			x := make([]float32, len(centres[c]))
			for j := range x {
				x[j] = float32(centres[c][j] + r.NormFloat64())
			}
			s.X = append(s.X, x)
			s.Y = append(s.Y, c)
		}
	}
	// Shuffle so that blocks mix classes, as real data would.
	r.Shuffle(len(s.X), func(i, j int) {
		s.X[i], s.X[j] = s.X[j], s.X[i]
		s.Y[i], s.Y[j] = s.Y[j], s.Y[i]
	})
	return s
}

func repeat(n, k int) []int {
	out := make([]int, k)
	for i := range out {
		out[i] = n
	}
	return out
}

func mustAcc(t testing.TB, h *Head, rows Rows) float64 {
	t.Helper()
	a, err := Accuracy(h, rows)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestBlobs(t *testing.T) {
	centres, train := blobs(1, 5, 20, repeat(400, 5), 1.0)
	test := sample(rand.New(rand.NewPCG(2, 2)), centres, repeat(200, 5))
	h, err := Train(train, Options{Classes: 5})
	if err != nil {
		t.Fatal(err)
	}
	tr, te := mustAcc(t, h, train), mustAcc(t, h, test)
	t.Logf("train %.4f held-out %.4f", tr, te)
	if tr <= 0.95 || te <= 0.9 {
		t.Errorf("accuracy train %.4f (want > 0.95) held-out %.4f (want > 0.9)", tr, te)
	}
}

func TestDeterministic(t *testing.T) {
	_, train := blobs(3, 4, 33, []int{300, 250, 200, 150}, 0.5)
	a, err := Train(train, Options{Classes: 4, ClassBalanced: true})
	if err != nil {
		t.Fatal(err)
	}
	// A different worker count must not change a bit: the reduction
	// order depends only on the row order.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	b, err := Train(train, Options{Classes: 4, ClassBalanced: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.W {
		if math.Float32bits(a.W[i]) != math.Float32bits(b.W[i]) {
			t.Fatalf("W[%d] differs: %v vs %v", i, a.W[i], b.W[i])
		}
	}
	for i := range a.B {
		if math.Float32bits(a.B[i]) != math.Float32bits(b.B[i]) {
			t.Fatalf("B[%d] differs: %v vs %v", i, a.B[i], b.B[i])
		}
	}
}

func TestLabelNoise(t *testing.T) {
	const k = 5
	centres, train := blobs(4, k, 20, repeat(400, k), 1.0)
	test := sample(rand.New(rand.NewPCG(5, 5)), centres, repeat(200, k))
	r := rand.New(rand.NewPCG(6, 6))
	flipped := 0
	for i := range train.Y {
		if r.Float64() < 0.3 {
			// Uniformly one of the other classes, so every flip is
			// really wrong.
			train.Y[i] = (train.Y[i] + 1 + r.IntN(k-1)) % k
			flipped++
		}
	}
	h, err := Train(train, Options{Classes: k})
	if err != nil {
		t.Fatal(err)
	}
	te := mustAcc(t, h, test)
	t.Logf("flipped %d/%d, clean held-out %.4f", flipped, len(train.Y), te)
	if te <= 0.85 {
		t.Errorf("clean held-out accuracy %.4f, want > 0.85", te)
	}
}

func TestClassBalanced(t *testing.T) {
	// Overlapping classes with a 20:1 imbalance: the plain fit sacrifices
	// the minority class, the balanced one should recover part of it.
	centres, train := blobs(7, 3, 10, []int{1000, 1000, 50}, 0.35)
	test := sample(rand.New(rand.NewPCG(8, 8)), centres, []int{0, 0, 1000})
	plain, err := Train(train, Options{Classes: 3})
	if err != nil {
		t.Fatal(err)
	}
	bal, err := Train(train, Options{Classes: 3, ClassBalanced: true})
	if err != nil {
		t.Fatal(err)
	}
	rp, rb := mustAcc(t, plain, test), mustAcc(t, bal, test)
	t.Logf("minority recall plain %.4f balanced %.4f", rp, rb)
	if rb <= rp+0.05 {
		t.Errorf("balanced minority recall %.4f, want well above plain %.4f", rb, rp)
	}
}

func TestErrors(t *testing.T) {
	_, good := blobs(9, 5, 20, repeat(2, 5), 1)
	bad := &Slice{X: good.X, Y: append([]int(nil), good.Y...)}
	bad.Y[3] = 7
	if _, err := Train(bad, Options{Classes: 5}); err == nil || err.Error() != "head: row 3: label 7 out of range [0,5)" {
		t.Errorf("bad label: got %v", err)
	}
	bad.Y[3] = -1
	if _, err := Train(bad, Options{Classes: 5}); err == nil || err.Error() != "head: row 3: label -1 out of range [0,5)" {
		t.Errorf("negative label: got %v", err)
	}

	short := &Slice{X: append([][]float32(nil), good.X...), Y: good.Y}
	short.X[2] = short.X[2][:19]
	if _, err := Train(short, Options{Classes: 5}); err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("dim mismatch: got %v", err)
	}
	h, err := Train(good, Options{Classes: 5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Accuracy(h, short); err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("accuracy dim mismatch: got %v", err)
	}

	if _, err := Train(&Slice{}, Options{Classes: 5}); err == nil {
		t.Error("no error for zero rows")
	}
	if _, err := Train(&Slice{X: [][]float32{{1}}, Y: []int{0}}, Options{Classes: 5}); err != nil {
		t.Errorf("one row: %v", err)
	}
	if _, err := Train(good, Options{Classes: 1}); err == nil {
		t.Error("no error for one class")
	}
	nan := &Slice{X: append([][]float32(nil), good.X...), Y: good.Y}
	nan.X[4] = append([]float32(nil), nan.X[4]...)
	nan.X[4][1] = float32(math.NaN())
	if _, err := Train(nan, Options{Classes: 5}); err == nil || !strings.Contains(err.Error(), "row 4") {
		t.Errorf("nan: got %v", err)
	}
}

// TestGradient checks the analytic gradient against central differences,
// with row and class weights in play.
func TestGradient(t *testing.T) {
	const C, d = 3, 4
	_, s := blobs(10, C, d, []int{7, 5, 3}, 1)
	s.W = make([]float32, len(s.X))
	for i := range s.W {
		s.W[i] = float32(1 + i%3)
	}
	st, err := scan(s, d, C)
	if err != nil {
		t.Fatal(err)
	}
	e := &evaluator{rows: s, d: d, classes: C, mean: st.mean, invStd: make([]float64, d),
		classW: []float64{1, 2, 3}, invWsum: 1 / 40.0, lambda: 0.3}
	for j := range d {
		e.invStd[j] = 1 / st.std[j]
	}
	r := rand.New(rand.NewPCG(11, 11))
	theta := make([]float64, C*d+C)
	for i := range theta {
		theta[i] = r.NormFloat64()
	}
	g := make([]float64, len(theta))
	if _, err := e.eval(theta, g); err != nil {
		t.Fatal(err)
	}
	scratch := make([]float64, len(theta))
	for i := range theta {
		const h = 1e-6
		old := theta[i]
		theta[i] = old + h
		fp, _ := e.eval(theta, scratch)
		theta[i] = old - h
		fm, _ := e.eval(theta, scratch)
		theta[i] = old
		num := (fp - fm) / (2 * h)
		if math.Abs(num-g[i]) > 1e-6*math.Max(1, math.Abs(num)) {
			t.Errorf("grad[%d] = %v, numeric %v", i, g[i], num)
		}
	}
}

// countRows counts passes so the benchmark can report how many objective
// evaluations training needed.
type countRows struct {
	Rows
	passes int
}

func (c *countRows) Each(fn func(x []float32, label int, weight float32) error) error {
	c.passes++
	return c.Rows.Each(fn)
}

func BenchmarkTrain(b *testing.B) {
	const n, d, C = 30000, 256, 10
	_, s := blobs(12, C, d, repeat(n/C, C), 0.15)
	rows := &countRows{Rows: s}
	var h *Head
	for b.Loop() {
		var err error
		if h, err = Train(rows, Options{Classes: C}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rows.passes)/float64(b.N), "passes/op")
	b.ReportMetric(mustAcc(b, h, s), "train-acc")
}

// A head read from storage is checked whole before use: a damaged one is
// an error, not an index out of range in Logits.
func TestHeadCheck(t *testing.T) {
	good := func() *Head {
		return &Head{Classes: 2, Dim: 3, Mean: make([]float32, 3), Std: []float32{1, 1, 1}, W: make([]float32, 6), B: make([]float32, 2)}
	}
	if err := good().Check(); err != nil {
		t.Fatalf("a whole head: %v", err)
	}
	for name, damage := range map[string]func(h *Head){
		"no classes":    func(h *Head) { h.Classes = 0 },
		"short mean":    func(h *Head) { h.Mean = h.Mean[:1] },
		"short std":     func(h *Head) { h.Std = nil },
		"short weights": func(h *Head) { h.W = h.W[:5] },
		"long biases":   func(h *Head) { h.B = append(h.B, 0) },
		"zero std":      func(h *Head) { h.Std[1] = 0 },
		"NaN std":       func(h *Head) { h.Std[2] = float32(math.NaN()) },
	} {
		h := good()
		damage(h)
		if err := h.Check(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
