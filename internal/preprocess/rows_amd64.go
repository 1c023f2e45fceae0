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

// resampleRGB is resampleRow for three channels followed by fillGeneral's
// affine step, four floats a tap with AVX, each pixel's channels stored in
// o0, o1 and o2 every step floats: a row of each plane (NCHW) or one row
// of pixels (NHWC). at[x] is output x's first source float in in, which
// holds a float past the last pixel any tap reads. It reports false, and
// writes nothing, without AVX (or pixels).
func resampleRGB(o0, o1, o2 []float32, step int, in []float32, t *taps, at []int, a, off *[4]float32) bool {
	w, n := len(at), t.n
	if !haveAVX || w == 0 {
		return false
	}
	// Bounds the vector loop relies on: at ascends, so the last pixel's
	// taps read the furthest.
	if at[w-1]+3*n+1 > len(in) || len(t.padded) < w*n || (w-1)*step >= min(len(o0), len(o1), len(o2)) {
		panic("preprocess: resampleRGB: buffers too short")
	}
	resampleRGBAVX(&o0[0], &o1[0], &o2[0], 4*step, w, n, &at[0], &in[0], &t.padded[0], a, off)
	return true
}

//go:noescape
func resampleRGBAVX(o0, o1, o2 *float32, step, w, n int, at *int, in, taps *float32, a, off *[4]float32)

// clampRound255 sets v[i] to v[i] clipped to [0, 255] and rounded to a
// whole number, ties to even: with AVX eight a step (VROUNDPS rounds as
// the generic loop's magic number does).
func clampRound255(v []float32) {
	if n := len(v) &^ 7; haveAVX && n > 0 {
		clampRound255AVX(&v[0], n)
		v = v[n:]
	}
	clampRound255Generic(v)
}

//go:noescape
func clampRound255AVX(v *float32, n int)
