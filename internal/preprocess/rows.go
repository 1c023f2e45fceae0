package preprocess

// addScaledRowGeneric sets dst[i] = dst[i] + w·src[i].
func addScaledRowGeneric(dst, src []float32, w float32) {
	src = src[:len(dst)]
	for i := range dst {
		dst[i] += float32(w * src[i]) // rounded, as addScaledRowAVX's, not fused
	}
}

// bytesToFloatsGeneric sets dst[i] = float32(src[i]).
func bytesToFloatsGeneric(dst []float32, src []byte) {
	src = src[:len(dst)]
	for i, u := range src {
		dst[i] = u8f[u]
	}
}

// clampRound255Generic sets v[i] to v[i] clipped to [0, 255] and rounded
// to a whole number, ties to even.
func clampRound255Generic(v []float32) {
	for i, x := range v {
		// Comparisons, not min and max, which must also mind NaN and
		// signed zeros.
		switch {
		case x < 0:
			x = 0
		case x > 255:
			x = 255
		}
		// Rounded by float32 arithmetic itself: past 2^23 a float32 has
		// no fraction, so adding 1.5·2^23 rounds x, ties to even (PIL
		// rounds them up: a sum of weights is seldom exactly half a
		// level), and subtracting it leaves the whole number.
		const magic = 1 << 23 * 1.5
		v[i] = (x + magic) - magic
	}
}
