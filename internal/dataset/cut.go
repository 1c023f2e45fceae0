package dataset

import (
	"context"
	"slices"

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

// Cut walks ds and cuts it into shards, ending a shard after the item for
// which end, given the shard's length, is true, and has write store shard
// i's manifest (Shard.Marshal), CutWrites at once. progress, when set, is
// told the shards and images cut so far after each shard. Memory holds the
// shard being listed and the CutWrites being written, whatever the
// dataset's size. A failed write ends the walk, and its error is the one
// returned.
func (s Source) Cut(ctx context.Context, ds schemas.Dataset, end func(it Item, n int) bool,
	write func(ctx context.Context, i int, manifest []byte) error, progress func(shards, images int)) (shards, images int, err error) {
	var cur Shard
	writes, wctx := errgroup.WithContext(ctx)
	writes.SetLimit(CutWrites)
	held := semaphore.NewWeighted(cutItems)
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
		i, sh := shards, Shard{Items: slices.Clone(cur.Items)}
		writes.Go(func() error {
			defer held.Release(n)
			data := sh.Marshal()
			sh.Items = nil // not held while the write waits on the store
			return write(wctx, i, data)
		})
		shards++
		cur.Items = cur.Items[:0]
		if progress != nil {
			progress(shards, images)
		}
		return nil
	}
	err = s.Walk(wctx, ds, func(it Item) error {
		images++
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
		return shards, images, werr
	}
	return shards, images, err
}
