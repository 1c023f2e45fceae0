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
