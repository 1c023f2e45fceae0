//go:build !amd64 || purego

package knn

// skip returns the offset of the first group of eight rows (from the
// start) holding a score products[j]+norms[j] ≤ cut, or of the tail of
// fewer than eight rows when no group does. A NaN score is never ≤ cut.
func skip(products, norms []float32, cut float32) int {
	return skipGeneric(products, norms, cut)
}

// minScore returns the least score products[j]+norms[j], +Inf for none;
// it is a row's score, or may be NaN when some score is.
func minScore(products, norms []float32) float32 {
	return minGeneric(products, norms)
}

// sumSquares returns ‖v‖².
func sumSquares(v []float32) float32 { return sumSquaresGeneric(v) }
