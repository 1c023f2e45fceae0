package webdataset

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// ReadRange returns length bytes of archive from offset.
type ReadRange func(ctx context.Context, archive string, offset, length int64) ([]byte, error)

// MaxGap is the largest gap between two members that [NewReader] still
// bridges with one read: reading 64 KiB of unwanted bytes costs less than
// another request to object storage.
const MaxGap = 64 << 10

// Reader serves members' bytes from few large range reads: consecutive
// members (in the order given) of the same archive that lie close together
// are fetched as one span.
//
// A Reader is safe for concurrent use. It suits many goroutines reading the
// planned members roughly in order, each member about as often as planned:
// a span is kept from its first Read until every planned occurrence of its
// members has been read, so a member that is planned but never read keeps
// its span in memory for the Reader's lifetime.
type Reader struct {
	read ReadRange

	// Readahead is how many spans after the one a Read first reaches are
	// fetched with it, in plan order, as long as they hold at most
	// Readahead times maxSpan bytes (members larger than maxSpan, each a
	// span, are left to the Reads that reach them). A store whose range
	// reads wait on latency, or on one connection's bandwidth, then
	// streams that many spans side by side instead of one after another.
	// Set it before the first Read; 0 fetches a span only when one of its
	// members is read.
	Readahead int
	maxSpan   int64

	mu sync.Mutex
	// queues holds, for each planned member, the spans of its occurrences
	// not yet taken by a Read, in plan order.
	queues map[Member][]*span
	spans  []*span // the plan, in order
}

// span is one range read covering consecutive planned members.
type span struct {
	archive        string
	offset, length int64
	index          int    // in the plan
	pending        int    // planned occurrences whose Reads have not returned
	fetch          *fetch // in flight or done; nil before the first Read and once dropped
	reached        bool   // a Read has taken one of its occurrences
}

// fetch is one range read of a span; the Reads waiting on it share it.
type fetch struct {
	done chan struct{} // closed when data and err are set
	data []byte
	err  error
	// abandoned is set when the fetch failed because the context of the
	// Read that made it ended: the waiting Reads fetch again rather than
	// return another caller's cancellation.
	abandoned bool
}

// NewReader plans spans over members, in the order they will mostly be read.
// A span covers consecutive members of one archive, each starting at or
// after the previous one's end with a gap of at most [MaxGap] bytes, and at
// most maxSpan bytes in all (a single larger member is a span of its own).
// A member listed more than once is planned once per occurrence.
func NewReader(members []Member, read ReadRange, maxSpan int64) *Reader {
	r := &Reader{read: read, queues: make(map[Member][]*span, len(members)), maxSpan: maxSpan}
	var cur *span
	for _, m := range members {
		if !valid(m) {
			continue // Read reports it
		}
		end := m.Offset + m.Size
		if cur != nil && m.Archive == cur.archive {
			curEnd := cur.offset + cur.length
			if m.Offset >= curEnd && m.Offset-curEnd <= MaxGap && end-cur.offset <= maxSpan {
				cur.length = end - cur.offset
				cur.pending++
				r.queues[m] = append(r.queues[m], cur)
				continue
			}
		}
		cur = &span{archive: m.Archive, offset: m.Offset, length: m.Size, index: len(r.spans), pending: 1}
		r.spans = append(r.spans, cur)
		r.queues[m] = append(r.queues[m], cur)
	}
	return r
}

// valid reports whether m's range is one a read can return.
func valid(m Member) bool {
	return m.Offset >= 0 && m.Size >= 0 && m.Offset <= (1<<63-1)-m.Size
}

// testHookWaiting runs as a Read begins to wait on another's fetch.
var testHookWaiting = func() {}

// Read returns m's bytes. The first Read of a span fetches it (concurrent
// Reads of the same span wait for that one fetch); once every planned
// occurrence of the span's members has been read the span is dropped, so
// memory stays near the spans in use. A failed fetch returns its error
// (wrapped with nothing: callers classify it with errors.Is) to the Reads
// waiting on it, and the next Read of that span fetches again; the failed
// Reads count as reads of their occurrences. A member that was not planned,
// or is read more often than planned, is read on its own.
//
// If ctx ends while Read waits on another Read's fetch, Read returns
// ctx.Err(). The returned slice must not be modified by the caller (it may
// alias the span).
func (r *Reader) Read(ctx context.Context, m Member) ([]byte, error) {
	if !valid(m) {
		return nil, fmt.Errorf("%s: member %q has an invalid range: offset %d, size %d", m.Archive, m.Name, m.Offset, m.Size)
	}
	r.mu.Lock()
	s := r.take(m)
	ahead := r.reach(s)
	r.mu.Unlock()
	for _, a := range ahead {
		go r.fill(ctx, a.span, a.fetch)
	}
	if s == nil {
		return r.fetchRange(ctx, m.Archive, m.Offset, m.Size)
	}
	defer r.done(s)

	off := m.Offset - s.offset
	member := func(data []byte) []byte { return data[off : off+m.Size : off+m.Size] }
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r.mu.Lock()
		f := s.fetch
		if f == nil {
			f = &fetch{done: make(chan struct{})}
			s.fetch = f
			r.mu.Unlock()
			data, err := r.fill(ctx, s, f)
			if err != nil {
				return nil, err
			}
			return member(data), nil
		}
		r.mu.Unlock()
		testHookWaiting()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if f.err == nil {
			return member(f.data), nil
		}
		if !f.abandoned {
			return nil, f.err
		}
	}
}

// fill makes fetch f of span s and hands its outcome to the Reads waiting on it.
func (r *Reader) fill(ctx context.Context, s *span, f *fetch) ([]byte, error) {
	// Set first so that waiters are released with an error, not left
	// waiting, should read panic.
	f.err = errFetchPanicked
	defer func() {
		r.mu.Lock()
		if f.err != nil {
			f.abandoned = ctx.Err() != nil
			if s.fetch == f {
				s.fetch = nil // the next Read fetches again
			}
		}
		close(f.done)
		r.mu.Unlock()
	}()
	f.data, f.err = r.fetchRange(ctx, s.archive, s.offset, s.length)
	return f.data, f.err
}

var errFetchPanicked = errors.New("webdataset: range read panicked")

// take removes one planned occurrence of m and returns its span, or nil if
// none is left. It prefers a span already fetched or being fetched, so that
// a member planned twice does not make a span fetch again. r.mu is held.
func (r *Reader) take(m Member) *span {
	q := r.queues[m]
	if len(q) == 0 {
		return nil
	}
	i := 0
	for j, s := range q {
		if s.fetch != nil {
			i = j
			break
		}
	}
	s := q[i]
	if len(q) == 1 {
		delete(r.queues, m)
	} else {
		r.queues[m] = append(q[:i:i], q[i+1:]...)
	}
	return s
}

// reach records that a Read took an occurrence in s. The first time, it
// starts fetches of the spans after s within Readahead that have none and
// are still to be read, and returns them, to be filled. r.mu is held.
func (r *Reader) reach(s *span) []prefetch {
	if s == nil || s.reached {
		return nil
	}
	s.reached = true
	var ahead []prefetch
	budget := int64(r.Readahead) * r.maxSpan
	for _, next := range r.spans[s.index+1 : min(s.index+1+r.Readahead, len(r.spans))] {
		if budget -= next.length; budget < 0 {
			break
		}
		if next.fetch == nil && next.pending > 0 {
			next.fetch = &fetch{done: make(chan struct{})}
			ahead = append(ahead, prefetch{next, next.fetch})
		}
	}
	return ahead
}

// prefetch is a fetch that reach started, and its span.
type prefetch struct {
	span  *span
	fetch *fetch
}

// done ends a Read of one of s's occurrences, dropping s after the last.
func (r *Reader) done(s *span) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.pending--
	if s.pending == 0 {
		s.fetch = nil
	}
}

// fetchRange reads length bytes of archive from offset, requiring all of them.
func (r *Reader) fetchRange(ctx context.Context, archive string, offset, length int64) ([]byte, error) {
	data, err := r.read(ctx, archive, offset, length)
	if err != nil {
		return nil, err
	}
	if int64(len(data)) < length {
		return nil, fmt.Errorf("%s: read of %d bytes at offset %d returned %d: %w", archive, length, offset, len(data), io.ErrUnexpectedEOF)
	}
	return data[:length:length], nil
}
