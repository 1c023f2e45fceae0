package head

import (
	"math/rand/v2"
	"testing"
)

func BenchmarkCorr(b *testing.B) {
	const n, d, C, rank = 30000, 256, 10, 16
	r := rand.New(rand.NewPCG(1, 2))
	A := make([][]float64, rank)
	for k := range A {
		A[k] = make([]float64, d)
		for j := range A[k] {
			A[k][j] = r.NormFloat64()
		}
	}
	centres := make([][]float64, C)
	for c := range centres {
		centres[c] = make([]float64, rank)
		for k := range centres[c] {
			centres[c][k] = 0.7 * r.NormFloat64()
		}
	}
	s := &Slice{}
	u := make([]float64, rank)
	for i := range n {
		c := i % C
		for k := range u {
			u[k] = centres[c][k] + r.NormFloat64()
		}
		x := make([]float32, d)
		for j := range x {
			v := 0.3 * r.NormFloat64()
			for k := range u {
				v += A[k][j] * u[k]
			}
			x[j] = float32(v)
		}
		s.X = append(s.X, x)
		s.Y = append(s.Y, c)
	}
	rows := &countRows{Rows: s}
	var h *Head
	for b.Loop() {
		var err error
		if h, err = Train(rows, Options{Classes: C, Lambda: 1e-3}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(rows.passes)/float64(b.N), "passes/op")
	b.ReportMetric(mustAcc(b, h, s), "train-acc")
}
