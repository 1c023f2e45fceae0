package activities

import "context"

// shardsAhead is how many of a pool's shard manifests (and their small
// companions) an activity that goes through all of them reads ahead: a
// few MiB of them, and from a store that answers in 50 ms, 64 reads
// ahead go through 2,000 shards (4M images) in about 3 s.
const shardsAhead = 64

// featuresAhead is how many shards' feature files an activity that goes
// through a set's (training, evaluating) reads ahead: each holds a
// shard's features, up to 16 MB at d = 2,048.
const featuresAhead = 4

// ahead reads the items 0 to n-1 of a run's files in order, depth of them
// at once ahead of the one taken. A remote store answers each read after
// its latency: one after another, the 500,000 shards of a pool of 10^9
// images would wait hours on it in a single activity.
type ahead[T any] struct {
	ctx     context.Context
	cancel  context.CancelFunc
	futures chan chan fetched[T]
	drop    func(T)
}

type fetched[T any] struct {
	v   T
	err error
}

// readAhead starts reading with fetch; drop, when set, releases an item
// read but not taken when stop is called.
func readAhead[T any](ctx context.Context, n, depth int, fetch func(ctx context.Context, i int) (T, error), drop func(T)) *ahead[T] {
	ctx, cancel := context.WithCancel(ctx)
	r := &ahead[T]{ctx: ctx, cancel: cancel, futures: make(chan chan fetched[T], depth), drop: drop}
	go func() {
		defer close(r.futures)
		for i := range n {
			f := make(chan fetched[T], 1)
			select {
			case r.futures <- f:
			case <-ctx.Done():
				return
			}
			go func() {
				v, err := fetch(ctx, i)
				f <- fetched[T]{v, err}
			}()
		}
	}()
	return r
}

// next waits for the next item; it must be called at most n times.
func (r *ahead[T]) next() (T, error) {
	f, ok := <-r.futures
	if !ok { // stopped before this one was asked for
		var zero T
		return zero, r.ctx.Err()
	}
	o := <-f
	return o.v, o.err
}

// stop cancels the reads ahead and drops what they read.
func (r *ahead[T]) stop() {
	r.cancel()
	for f := range r.futures {
		if o := <-f; o.err == nil && r.drop != nil {
			r.drop(o.v)
		}
	}
}
