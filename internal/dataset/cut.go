package dataset

import (
	"context"
	"slices"

	"golang.org/x/sync/errgroup"

	"dcd/schemas"
)

// CutWrites is how many shards Cut has written at once. A remote store
// answers each write after its latency, tens of milliseconds on S3: 64 at
// once, the 500,000 shards of a pool of 10^9 images took 6 minutes to
// write at 50 ms, longer than reading its Parquet manifest (BenchmarkCut:
// 2.1M images/s at 64, 4.9M at 256). Each holds its shard's manifest, a
// few hundred KiB.
const CutWrites = 256

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
	flush := func() {
		if len(cur.Items) == 0 {
			return
		}
		// Encoded beside the walk, on another core: BenchmarkCut 4.7M →
		// 7.3M images/s on two.
		i, sh := shards, Shard{Items: slices.Clone(cur.Items)}
		writes.Go(func() error {
			data := sh.Marshal()
			sh.Items = nil // not held while the write waits on the store
			return write(wctx, i, data)
		})
		shards++
		cur.Items = cur.Items[:0]
		if progress != nil {
			progress(shards, images)
		}
	}
	err = s.Walk(wctx, ds, func(it Item) error {
		images++
		cur.Items = append(cur.Items, it)
		if end(it, len(cur.Items)) {
			flush()
			return wctx.Err() // a write failed: stop listing
		}
		return nil
	})
	if err == nil {
		flush()
	}
	if werr := writes.Wait(); werr != nil {
		return shards, images, werr
	}
	return shards, images, err
}
