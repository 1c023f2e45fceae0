//go:build !purego

package knn

import "golang.org/x/sys/cpu"

// The selection reads every product of the scan once; in Go that costs
// 0.6–0.7 ns a row, which beside ORT's product on d = 384 (about 10 ns of
// CPU a row) made the search 0.8 of the bare Gemm. AVX2 compares 32 rows a
// step, about 0.1 ns a row.
var haveAVX2 = cpu.X86.HasAVX2

// skip returns the offset of the first group of eight rows (from the
// start) holding a score products[j]+norms[j] ≤ cut, or of the tail of
// fewer than eight rows when no group does. A NaN score is never ≤ cut.
func skip(products, norms []float32, cut float32) int {
	if haveAVX2 && len(products) >= 8 {
		return skipAVX2(&products[0], &norms[:len(products)][0], len(products), cut)
	}
	return skipGeneric(products, norms, cut)
}

//go:noescape
func skipAVX2(products, norms *float32, n int, cut float32) int

// minScore returns the least score products[j]+norms[j], +Inf for none;
// it is a row's score, or may be NaN when some score is.
func minScore(products, norms []float32) float32 {
	if n := len(products) &^ 7; haveAVX2 && n > 0 {
		m := minAVX2(&products[0], &norms[:n][0], n)
		if n < len(products) {
			m = min(m, minGeneric(products[n:], norms[n:len(products)]))
		}
		return m
	}
	return minGeneric(products, norms)
}

//go:noescape
func minAVX2(products, norms *float32, n int) float32

// sumSquares returns ‖v‖², summed in vector lanes.
func sumSquares(v []float32) float32 {
	if n := len(v) &^ 7; haveAVX2 && n > 0 {
		s := sumSquaresAVX(&v[0], n)
		for _, x := range v[n:] {
			s += x * x
		}
		return s
	}
	return sumSquaresGeneric(v)
}

//go:noescape
func sumSquaresAVX(v *float32, n int) float32
