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

// ycbcrRowVec converts the leading pixels of a YCbCr row to interleaved
// RGB floats, exactly as color.YCbCrToRGB and u8f do, eight a step with
// AVX2, and returns how many it did (a multiple of eight; 0 without
// AVX2): ys[k] with cb[k] and cr[k], or with half cb[k/2] and cr[k/2].
func ycbcrRowVec(out []float32, ys, cb, cr []byte, half bool) int {
	n := min(len(ys), len(out)/3) &^ 7
	nc := n
	if half {
		nc = n / 2
	}
	if !haveAVX2 || n == 0 || len(cb) < nc || len(cr) < nc {
		return 0
	}
	ycbcrRowAVX2(&out[0], &ys[0], &cb[0], &cr[0], n, half)
	return n
}

//go:noescape
func ycbcrRowAVX2(dst *float32, y, cb, cr *byte, n int, half bool)
