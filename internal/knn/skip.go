package knn

import "math"

// skipGeneric is skip in Go: eight rows a step, a comparison each, which
// the branch predictor carries while nearly every row fails.
func skipGeneric(products, norms []float32, cut float32) int {
	norms = norms[:len(products)]
	j := 0
	for ; j+8 <= len(products); j += 8 {
		v, n := products[j:j+8:j+8], norms[j:j+8:j+8]
		if v[0]+n[0] <= cut || v[1]+n[1] <= cut || v[2]+n[2] <= cut || v[3]+n[3] <= cut ||
			v[4]+n[4] <= cut || v[5]+n[5] <= cut || v[6]+n[6] <= cut || v[7]+n[7] <= cut {
			break
		}
	}
	return j
}

// minGeneric is minScore in Go. A NaN score is passed over.
func minGeneric(products, norms []float32) float32 {
	norms = norms[:len(products)]
	m := float32(math.Inf(1))
	for j, p := range products {
		if x := p + norms[j]; x < m {
			m = x
		}
	}
	return m
}

// sumSquaresGeneric is sumSquares in Go, norm2's eight lanes: the vector
// one sums in other lanes, so a norm may differ in its last bits between
// machines with and without AVX2.
func sumSquaresGeneric(v []float32) float32 { return norm2(v) }
