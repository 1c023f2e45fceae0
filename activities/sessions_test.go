package activities

import (
	"context"
	"testing"
	"time"

	"dcd/internal/ortrun"
)

// The searches' budget: a hold waits while the bytes are held, a release
// called twice gives them back once, and a hold larger than the budget
// takes all of it rather than waiting forever.
func TestHoldBoundsSearchBytes(t *testing.T) {
	s := NewSessions(ortrun.Options{}, ortrun.Options{})
	ctx := context.Background()
	first, err := s.hold(ctx, searchBytes/2+1)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan func(), 1)
	go func() {
		r, err := s.hold(ctx, searchBytes/2+1)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	select {
	case <-got:
		t.Fatal("a second hold went through while the first held more than half the budget")
	case <-time.After(50 * time.Millisecond):
	}
	first()
	first() // once only
	second := <-got
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.hold(short, searchBytes/2); err == nil {
		t.Fatal("a release called twice gave its bytes back twice")
	}
	second()
	all, err := s.hold(ctx, 4*searchBytes)
	if err != nil {
		t.Fatal(err)
	}
	all()
}
