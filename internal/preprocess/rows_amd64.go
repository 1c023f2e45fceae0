//go:build !purego

package preprocess

import "golang.org/x/sys/cpu"

// The vertical pass sums whole rows of floats: in Go a sample at a time,
// with AVX sixteen a step. A multiply then an add, not a fused one, so
// the sums are those of the Go loops to the bit.
var haveAVX, haveAVX2 = cpu.X86.HasAVX, cpu.X86.HasAVX2

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
func addScaledRowAVX(dst, src *float32, n int, w float32)

// bytesToFloats sets dst[i] = float32(src[i]); src is at least as long as
// dst. A row of 8-bit samples becomes floats sixteen a step with AVX2,
// exactly as the table lookup does (bytesToFloatsGeneric).
func bytesToFloats(dst []float32, src []byte) {
	if n := len(dst) &^ 15; haveAVX2 && n > 0 {
		bytesToFloatsAVX2(&dst[0], &src[:len(dst)][0], n)
		bytesToFloatsGeneric(dst[n:], src[n:])
		return
	}
	bytesToFloatsGeneric(dst, src)
}

//go:noescape
func bytesToFloatsAVX2(dst *float32, src *byte, n int)
