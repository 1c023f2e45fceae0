//go:build !amd64 || purego

package preprocess

// addScaledRow sets dst[i] = dst[i] + w·src[i]; src is at least as long
// as dst.
func addScaledRow(dst, src []float32, w float32) { addScaledRowGeneric(dst, src, w) }

// bytesToFloats sets dst[i] = float32(src[i]); src is at least as long as
// dst.
func bytesToFloats(dst []float32, src []byte) { bytesToFloatsGeneric(dst, src) }

// ycbcrRowVec converts no pixels: the caller's loop does them all.
func ycbcrRowVec(out []float32, ys, cb, cr []byte, half bool) int { return 0 }

// resampleRGB does nothing: fillGeneral's loops do it.
func resampleRGB(o0, o1, o2 []float32, step int, in []float32, t *taps, at []int, a, off *[4]float32) bool {
	return false
}

// clampRound255 sets v[i] to v[i] clipped to [0, 255] and rounded to a
// whole number, ties to even.
func clampRound255(v []float32) { clampRound255Generic(v) }
