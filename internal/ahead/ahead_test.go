package ahead

import (
	"context"
	"errors"
	"io"
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
	r := Read(ctx, n, depth, fetch, func(int) { dropped.Add(1) })
	for i := range 150 {
		if v, err := r.Next(); v != i || err != nil {
			t.Fatalf("item %d: got %d, %v", i, v, err)
		}
	}
	if _, err := r.Next(); err != bad {
		t.Fatalf("item 150: %v, want its error", err)
	}
	time.Sleep(5 * time.Millisecond) // the reads ahead of 150 finish
	r.Stop()
	if m := most.Load(); m < 2 || m > depth+1 {
		t.Errorf("%d reads at once, want 2 to %d", m, depth+1)
	}
	if d := dropped.Load(); d < 1 || d > depth+1 {
		t.Errorf("stop dropped %d items; want those read ahead of item 150, 1 to %d", d, depth+1)
	}
	if _, err := r.Next(); !errors.Is(err, context.Canceled) {
		t.Errorf("next after stop: %v, want cancelled", err)
	}
}

// A stream's items come in the order produce started them, then
// produce's error; Stop returns while produce waits to start more.
func TestStream(t *testing.T) {
	ctx := context.Background()
	listing := errors.New("listing failed after 30")
	r := Stream(ctx, 4, func(ctx context.Context, start func(Fetch[int]) bool) error {
		for i := range 30 {
			if !start(func(context.Context) (int, error) {
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
				return i, nil
			}) {
				return ctx.Err()
			}
		}
		return listing
	}, nil)
	for i := range 30 {
		if v, err := r.Next(); v != i || err != nil {
			t.Fatalf("item %d: got %d, %v", i, v, err)
		}
	}
	if _, err := r.Next(); err != listing {
		t.Fatalf("after the last item: %v, want the listing's error", err)
	}

	endless := Stream(ctx, 4, func(ctx context.Context, start func(Fetch[int]) bool) error {
		for start(func(context.Context) (int, error) { return 1, nil }) {
		}
		return ctx.Err()
	}, nil)
	if v, err := endless.Next(); v != 1 || err != nil {
		t.Fatalf("endless stream: %d, %v", v, err)
	}
	endless.Stop()

	done := Read(ctx, 2, 4, func(_ context.Context, i int) (int, error) { return i, nil }, nil)
	done.Next()
	done.Next()
	if _, err := done.Next(); err != io.EOF {
		t.Errorf("after n items: %v, want io.EOF", err)
	}
}
