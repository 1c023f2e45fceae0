package activities

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
)

// Items come in order however the reads ahead finish; an error comes in
// its item's place; stop drops what was read and not taken.
func TestReadAhead(t *testing.T) {
	ctx := context.Background()
	const n, depth = 200, 8
	var inFlight, most, dropped atomic.Int32
	bad := errors.New("item 150 is bad")
	fetch := func(_ context.Context, i int) (int, error) {
		now := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); now > m && !most.CompareAndSwap(m, now); m = most.Load() {
		}
		time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
		if i == 150 {
			return 0, bad
		}
		return i, nil
	}
	r := readAhead(ctx, n, depth, fetch, func(int) { dropped.Add(1) })
	for i := range 150 {
		if v, err := r.next(); v != i || err != nil {
			t.Fatalf("item %d: got %d, %v", i, v, err)
		}
	}
	if _, err := r.next(); err != bad {
		t.Fatalf("item 150: %v, want its error", err)
	}
	time.Sleep(5 * time.Millisecond) // the reads ahead of 150 finish
	r.stop()
	if m := most.Load(); m < 2 || m > depth+1 {
		t.Errorf("%d reads at once, want 2 to %d", m, depth+1)
	}
	if d := dropped.Load(); d < 1 || d > depth+1 {
		t.Errorf("stop dropped %d items; want those read ahead of item 150, 1 to %d", d, depth+1)
	}
	if _, err := r.next(); !errors.Is(err, context.Canceled) {
		t.Errorf("next after stop: %v, want cancelled", err)
	}
}
