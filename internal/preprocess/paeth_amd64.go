//go:build !purego

package preprocess

// paethPixels unfilters Paeth bytes of RGB and RGBA rows a pixel at a
// time in vector lanes, and returns how many; unfilterPaeth does the rest.
// In Go a channel is a chain of dependent steps, compiled with branches
// and spills: 60 % of a 256×256 RGB decode.
func paethPixels(c, p []byte, bpp int) int {
	if (bpp != 3 && bpp != 4) || len(c) < 4 || len(p) < len(c) {
		return 0
	}
	return paethSSE2(&c[0], &p[0], len(c), bpp)
}

//go:noescape
func paethSSE2(c, p *byte, n, bpp int) int
