//go:build !amd64 || purego

package preprocess

// paethPixels unfilters nothing here: unfilterPaeth does every byte.
func paethPixels(c, p []byte, bpp int) int { return 0 }

// paethRows unfilters nothing here: each row is unfiltered alone.
func paethRows(c0, c1, p []byte, bpp int) bool { return false }
