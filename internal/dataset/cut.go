package dataset

import (
	"context"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"dcd/schemas"
)

// CutWrites is how many shards Cut has written at once, and cutItems how
// many images they may hold between them. A remote store answers each
// write after its latency, tens of milliseconds on S3: 64 at once, the
// 500,000 shards of a pool of 10^9 images took 6 minutes to write at
// 50 ms, longer than reading its Parquet manifest (BenchmarkCut: 2.1M
// images/s at 64, 4.9M at 256). A pass's shards hold 2,000 images, about
// 500 KiB encoding and encoded; a pack's, one per archive, 10,000, and
// 256 of them would hold over 600 MiB: cutItems keeps that to 128 MiB or
// so, 51 of a pack's at once.
const (
	CutWrites = 256
	cutItems  = CutWrites * 2000
)

// Progress is how far a Cut has got: its shards before Shards are
// written, and Mark is where the walk stood after the last of them, so
// Mark.Next is how many images they hold. Cut from it goes on with shard
// Shards; the zero Progress is the start.
type Progress struct {
	Shards int  `json:"shards"`
	Mark   Mark `json:"mark"`
}

// Cut walks ds from where from stood and cuts it into shards, ending a
// shard after the item for which end, given the shard's length, is true,
// and has write store shard i's manifest (Shard.Marshal), CutWrites at
// once. progress, when set, is told each time the shards written without
// a gap from the first grow (writes end out of order). Memory holds the
// shard being listed and the CutWrites being written, whatever the
// dataset's size. A failed write ends the walk, and its error is the one
// returned. Cut returns how far it got: on success, every shard written.
func (s Source) Cut(ctx context.Context, ds schemas.Dataset, from Progress, end func(it Item, n int) bool,
	write func(ctx context.Context, i int, manifest []byte) error, progress func(Progress)) (Progress, error) {
	var cur Shard
	writes, wctx := errgroup.WithContext(ctx)
	writes.SetLimit(CutWrites)
	held := semaphore.NewWeighted(cutItems)
	at, next := from.Mark, from.Shards
	done := &writtenPrefix{p: from, ends: map[int]Mark{}, finished: map[int]bool{}, progress: progress}
	flush := func() error {
		if len(cur.Items) == 0 {
			return nil
		}
		n := min(int64(len(cur.Items)), cutItems)
		if err := held.Acquire(wctx, n); err != nil {
			return err // a write failed
		}
		// Encoded beside the walk, on another core: BenchmarkCut 4.7M →
		// 7.3M images/s on two.
		i, sh := next, Shard{Items: slices.Clone(cur.Items)}
		done.cut(i, at)
		writes.Go(func() error {
			defer held.Release(n)
			data := sh.Marshal()
			sh.Items = nil // not held while the write waits on the store
			if err := write(wctx, i, data); err != nil {
				return err
			}
			done.written(i)
			return nil
		})
		next++
		cur.Items = cur.Items[:0]
		return nil
	}
	err := s.WalkFrom(wctx, ds, &at, func(it Item) error {
		cur.Items = append(cur.Items, it)
		if end(it, len(cur.Items)) {
			if err := flush(); err != nil {
				return err
			}
			return wctx.Err() // a write failed: stop listing
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if werr := writes.Wait(); werr != nil {
		err = werr
	}
	return done.p, err
}

// writtenPrefix follows a Cut's writes, which end out of order, for the
// shards written without a gap from the first.
type writtenPrefix struct {
	mu       sync.Mutex
	p        Progress
	ends     map[int]Mark // shards cut and not yet in p: where the walk stood after each
	finished map[int]bool // of those, the ones written
	progress func(Progress)
}

// cut notes that shard i ends where the walk stands at end.
func (w *writtenPrefix) cut(i int, end Mark) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ends[i] = end
}

// written notes that shard i is written.
func (w *writtenPrefix) written(i int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.finished[i] = true
	grew := false
	for w.finished[w.p.Shards] {
		delete(w.finished, w.p.Shards)
		w.p.Mark = w.ends[w.p.Shards]
		delete(w.ends, w.p.Shards)
		w.p.Shards++
		grew = true
	}
	if grew && w.progress != nil {
		w.progress(w.p)
	}
}
