package preprocess

import (
	"bytes"
	"image"
	"image/png"
	"sync"
	"testing"

	"golang.org/x/sync/semaphore"
)

// Images whose pixels are large decode no more of them at once than the
// budget holds, however many decoders ask: eight images taking 8 MiB, a
// budget of 16 MiB, two at a time; each is decoded all the same.
func TestDecodeBudget(t *testing.T) {
	defer func(b, from int64, g *semaphore.Weighted) { decodeBudget, gateFrom, gate = b, from, g }(decodeBudget, gateFrom, gate)
	decodeBudget, gateFrom = 16<<20, 1<<20
	gate = semaphore.NewWeighted(decodeBudget)
	peak.Store(0)

	img := image.NewNRGBA(image.Rect(0, 0, 1024, 1024))
	for i := range img.Pix {
		img.Pix[i] = byte(i % 251)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	if got := decodeBytes(buf.Bytes()); got != 8<<20 {
		t.Fatalf("decodeBytes of a 1024×1024 RGBA PNG = %d, want %d (its pixels and its inflated rows)", got, 8<<20)
	}
	p, err := Spec{Channels: 3, Height: 32, Width: 32}.WithDefaults().Prepare()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- p.DecodeFill(make([]float32, 3*32*32), buf.Bytes())
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := peak.Load(); got > decodeBudget || got < 8<<20 {
		t.Errorf("the most pixels decoding at once: %d bytes, want the budget's %d at most (and one image's at least)", got, decodeBudget)
	}
	if n := inFlight.Load(); n != 0 {
		t.Errorf("%d bytes still held after every decode", n)
	}
}
