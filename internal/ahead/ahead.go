// Package ahead reads items in order, several at once ahead of the one
// taken. A remote store answers each read after its latency, tens of
// milliseconds: one after another, the 500,000 shard manifests of a pool of
// 10^9 images, or the sample lists of its archives, would wait hours on it.
//
// A Reader starts each fetch as soon as fewer than depth results wait to be
// taken, and hands them back in the order they were started, however they
// finish; an error comes in its item's place.
package ahead

import (
	"context"
	"io"
)

// Reader hands back the results of fetches in the order they started.
type Reader[T any] struct {
	ctx     context.Context
	cancel  context.CancelFunc
	futures chan chan fetched[T]
	drop    func(T)
	err     error // produce's, set before futures is closed
}

type fetched[T any] struct {
	v   T
	err error
}

// Read fetches the items 0 to n-1. drop, when set, releases an item read
// but not taken when Stop is called.
func Read[T any](ctx context.Context, n, depth int, fetch func(ctx context.Context, i int) (T, error), drop func(T)) *Reader[T] {
	return Stream(ctx, depth, func(ctx context.Context, start func(Fetch[T]) bool) error {
		for i := range n {
			if !start(func(ctx context.Context) (T, error) { return fetch(ctx, i) }) {
				break
			}
		}
		return nil
	}, drop)
}

// Fetch reads one item.
type Fetch[T any] func(ctx context.Context) (T, error)

// Stream fetches the items produce finds as it goes (a listing, say): it
// calls start for each, which waits while depth results wait to be taken
// and returns false once the reader is stopped, when produce should
// return. Next hands back produce's error after the last item it started.
func Stream[T any](ctx context.Context, depth int, produce func(ctx context.Context, start func(Fetch[T]) bool) error, drop func(T)) *Reader[T] {
	ctx, cancel := context.WithCancel(ctx)
	r := &Reader[T]{ctx: ctx, cancel: cancel, futures: make(chan chan fetched[T], depth), drop: drop}
	start := func(fetch Fetch[T]) bool {
		if ctx.Err() != nil { // else the select may yet pick the send
			return false
		}
		f := make(chan fetched[T], 1)
		select {
		case r.futures <- f:
		case <-ctx.Done():
			return false
		}
		go func() {
			v, err := fetch(ctx)
			f <- fetched[T]{v, err}
		}()
		return true
	}
	go func() {
		defer close(r.futures)
		r.err = produce(ctx, start)
	}()
	return r
}

// Next waits for the next item. After the last it returns io.EOF, or what
// ended the items early: produce's error, or the context's.
func (r *Reader[T]) Next() (T, error) {
	f, ok := <-r.futures
	if !ok {
		var zero T
		switch {
		case r.err != nil:
			return zero, r.err
		case r.ctx.Err() != nil:
			return zero, r.ctx.Err()
		}
		return zero, io.EOF
	}
	o := <-f
	return o.v, o.err
}

// Stop cancels the reads ahead and drops what they read. It waits for
// produce to return.
func (r *Reader[T]) Stop() {
	r.cancel()
	for f := range r.futures {
		if o := <-f; o.err == nil && r.drop != nil {
			r.drop(o.v)
		}
	}
}
