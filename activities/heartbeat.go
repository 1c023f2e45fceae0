package activities

import (
	"context"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"
)

// An activity heartbeats to show Temporal it is alive: one that misses
// its heartbeat timeout is retried elsewhere. These helpers beat on a
// ticker while work goes on, stop beating when work stalls, and do nothing
// outside an activity (tests call some activity helpers directly).

// heartbeat records progress when ctx is an activity's (tests call some
// helpers outside one).
func heartbeat(ctx context.Context, details ...any) {
	if activity.IsActivity(ctx) {
		activity.RecordHeartbeat(ctx, details...)
	}
}

// warn logs through the activity's logger, when there is one.
func warn(ctx context.Context, msg string, keyvals ...any) {
	if activity.IsActivity(ctx) {
		activity.GetLogger(ctx).Warn(msg, keyvals...)
	}
}

// beat is how often an activity that heartbeats on a ticker (beating)
// does: within the least heartbeat timeout a config may set (1 s); the SDK
// sends the server at most one per most of the timeout.
const beat = 500 * time.Millisecond

// beating heartbeats ctx's activity every beat with details() until the
// returned stop is called, for an activity whose progress comes in steps
// that may be longer than the heartbeat timeout.
func beating(ctx context.Context, details func() []any) (stop func()) {
	return every(beat, func() { heartbeat(ctx, details()...) })
}

// beatingWhileMoving is beating for work that reports its progress
// (moved): once it has moved, it beats only while its last move is more
// recent than stallBound or three times its slowest step so far, so that a
// read that stalled mid-body, or an inference that hangs, still misses its
// heartbeats and is retried elsewhere, not kept alive to the activity's
// timeout, while a batch of a large model or a large image, slower than a
// heartbeat timeout (or than stallBound: a batch of 2,048 through a ViT on
// a few cores), is not taken for one. Before its first move (a first step
// of unknown length) it beats as beating does.
func beatingWhileMoving(ctx context.Context, details func() []any) (stop, moved func()) {
	return whileMoving(beat, stallBound(ctx), func() { heartbeat(ctx, details()...) })
}

// whileMoving calls fn every d, as every does, until moved was first
// called, then while the last call of moved is within bound, or three
// times the longest gap between calls so far.
func whileMoving(d, bound time.Duration, fn func()) (stop, moved func()) {
	var mu sync.Mutex
	last, longest, moves := time.Now(), time.Duration(0), 0
	stop = every(d, func() {
		mu.Lock()
		live := moves == 0 || time.Since(last) < max(bound, 3*longest)
		mu.Unlock()
		if live {
			fn()
		}
	})
	return stop, func() {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		longest, last, moves = max(longest, now.Sub(last)), now, moves+1
	}
}

// stallBound is how long work may go without moving before its beats stop:
// ten heartbeat timeouts, five minutes at least.
func stallBound(ctx context.Context) time.Duration {
	hb := 30 * time.Second
	if activity.IsActivity(ctx) && activity.GetInfo(ctx).HeartbeatTimeout > 0 {
		hb = activity.GetInfo(ctx).HeartbeatTimeout
	}
	return max(10*hb, 5*time.Minute)
}

// every calls fn every d until the returned stop is called, which waits
// for a call under way. stop may be called again (deferred, for a panic
// that Temporal recovers, and called where the work ends).
func every(d time.Duration, fn func()) (stop func()) {
	done := make(chan struct{})
	var calls sync.WaitGroup
	calls.Go(func() {
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fn()
			case <-done:
				return
			}
		}
	})
	return sync.OnceFunc(func() { close(done); calls.Wait() })
}
