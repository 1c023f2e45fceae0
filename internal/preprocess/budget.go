package preprocess

import (
	"bytes"
	"context"
	"encoding/binary"
	"image"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Decoding an image holds its pixels whole, whatever the file's size: a
// 261 KB PNG of 8192×8192 zeros is 256 MiB decoded, legally compressed.
// A worker decodes several images at once (its decoders times the shards
// it embeds at once), so a pool of such images took a 2-vCPU worker to
// 3.9 GB and would take a 16-core one to tens. Images whose decoding
// takes more than gateFrom bytes decode only while the process holds that
// much of decodeBudget; smaller ones, nearly all, pass without a check.
// The budget is half of what they may take of the heap, which the
// garbage collector lets grow to twice what is live.
var (
	decodeBudget int64 = 512 << 20
	gateFrom     int64 = 16 << 20

	gate                  = semaphore.NewWeighted(decodeBudget)
	inFlight atomic.Int64 // bytes held by images decoding behind the gate
	peak     atomic.Int64 // the most inFlight held, for the tests
)

// enterGate waits, for an image whose pixels are large, until the budget
// has room for them, and returns the function that gives it back.
func enterGate(data []byte) (leave func()) {
	n := min(decodeBytes(data), decodeBudget)
	if n <= gateFrom {
		return func() {}
	}
	gate.Acquire(context.Background(), n) // never fails without a deadline
	for now := inFlight.Add(n); ; {
		if p := peak.Load(); now <= p || peak.CompareAndSwap(p, now) {
			break
		}
	}
	return func() {
		inFlight.Add(-n)
		gate.Release(n)
	}
}

// decodeBytes is what decoding data takes, from its header: its pixels,
// at most 8 bytes a pixel (16-bit RGBA), 4 for others, and for a PNG its
// inflated rows beside them; 0 when the header does not say (the decoder
// then fails on it).
func decodeBytes(data []byte) int64 {
	if len(data) >= 25 && string(data[:len(pngSignature)]) == pngSignature && string(data[12:16]) == "IHDR" {
		// A PNG's size is at a fixed offset: no parse of its header.
		w, h := int64(binary.BigEndian.Uint32(data[16:20])), int64(binary.BigEndian.Uint32(data[20:24]))
		perPixel := int64(4)
		if data[24] == 16 {
			perPixel = 8
		}
		return 2 * w * h * perPixel
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return 0
	}
	return int64(cfg.Width) * int64(cfg.Height) * 4
}
