//go:build !purego

package preprocess

import "golang.org/x/sys/cpu"

// The vertical pass sums whole rows of floats: in Go a sample at a time,
// with AVX sixteen a step. A multiply then an add, not a fused one, so
// the sums are those of the Go loops to the bit.
var haveAVX = cpu.X86.HasAVX

// scaleRow sets dst[i] = w·src[i]; src is at least as long as dst.
func scaleRow(dst, src []float32, w float32) {
	if haveAVX && len(dst) > 0 {
		scaleRowAVX(&dst[0], &src[:len(dst)][0], len(dst), w)
		return
	}
	scaleRowGeneric(dst, src, w)
}

// addScaledRow sets dst[i] = dst[i] + w·src[i]; src is at least as long
// as dst.
func addScaledRow(dst, src []float32, w float32) {
	if haveAVX && len(dst) > 0 {
		addScaledRowAVX(&dst[0], &src[:len(dst)][0], len(dst), w)
		return
	}
	addScaledRowGeneric(dst, src, w)
}

//go:noescape
func scaleRowAVX(dst, src *float32, n int, w float32)

//go:noescape
func addScaledRowAVX(dst, src *float32, n int, w float32)
