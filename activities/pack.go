package activities

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"dcd/internal/dataset"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
)

// The steps of a pack (dataset.StartPack): PlanPack, PackArchive for each
// archive, FinishPack. A pack's plan is kept as the shard manifests of a
// run named after its workflow, ShardKey(id, PackShards, n).

// PackShards names a pack's shard manifests, one per archive.
const PackShards = "pack"

// PlanPackInput is a pack to begin (or take up).
type PlanPackInput struct {
	ID         string // the pack's workflow ID
	Dataset    schemas.Dataset
	Out        string
	PerArchive int
}

// PlanPack claims in.Out for the pack and cuts the dataset into runs of
// PerArchive images in its order, one manifest per archive. A dataset
// that cannot be listed, or is empty, leaves in.Out unclaimed.
func (a *Activities) PlanPack(ctx context.Context, in PlanPackInput) (PlanResult, error) {
	if err := a.source().StartPack(ctx, in.Dataset, in.Out, in.PerArchive); err != nil {
		return PlanResult{}, packError(ctx, err)
	}
	res, _, err := a.plan(ctx, in.ID, PackShards, in.Dataset, fmt.Sprintf("pack archives of %d", in.PerArchive), nil, func(_ dataset.Item, n int) bool { return n == in.PerArchive }, nil)
	if err == nil && res.Images == 0 {
		err = errors.New("the dataset has no images")
	}
	if err != nil && !retried(ctx, err) {
		// Nothing to pack: leave the output as it was found.
		if aerr := a.source().AbandonPack(ctx, in.Out); aerr != nil {
			activity.GetLogger(ctx).Warn("pack: could not remove the output's pack.json", "out", in.Out, "error", aerr)
		}
		return res, invalid("pack: %v", err)
	}
	return res, err
}

// PackArchiveInput is one archive of a pack.
type PackArchiveInput struct {
	ID      string
	Out     string
	Archive int
	Readers int
}

// PackArchiveResult is dataset.Archive with its skips counted: a pool's
// skip list belongs in storage (FinishPack), not in workflow history.
type PackArchiveResult struct {
	Key       string
	Images    int
	Bytes     int64
	Skipped   int
	FirstSkip *dataset.Skip `json:",omitempty"`
	Resumed   bool
}

// PackArchive writes archive in.Archive of the pack (dataset.PackArchive),
// heartbeating the images done; a retry writes it anew.
func (a *Activities) PackArchive(ctx context.Context, in PackArchiveInput) (PackArchiveResult, error) {
	sh, err := a.readShard(ctx, ShardKey(in.ID, PackShards, in.Archive))
	if err != nil {
		return PackArchiveResult{}, err
	}
	// An image of 150 MB read from a slow store takes longer than a
	// heartbeat timeout: beat meanwhile, not only as images are written.
	var done atomic.Int64
	stop, moved := beatingWhileMoving(ctx, func() []any { return []any{done.Load()} })
	defer stop()
	arc, err := a.source().PackArchive(ctx, in.Out, in.Archive, sh.Items, in.Readers, func(n int) { done.Store(int64(n)); moved() })
	if err != nil {
		return PackArchiveResult{}, packError(ctx, err)
	}
	res := PackArchiveResult{Key: arc.Key, Images: arc.Images, Bytes: arc.Bytes, Skipped: len(arc.Skipped), Resumed: arc.Resumed}
	if len(arc.Skipped) > 0 {
		// Into the pack's history and the starter's output: as shown.
		first := arc.Skipped[0]
		first.URI, first.Reason = redact.URL(first.URI), redact.Text(first.Reason)
		res.FirstSkip = &first
	}
	return res, nil
}

// FinishPackInput is a pack whose archives are all written.
type FinishPackInput struct {
	Out      string
	Archives int
}

// FinishPack writes the pack's skip list (dataset.FinishPack).
func (a *Activities) FinishPack(ctx context.Context, in FinishPackInput) (int, error) {
	stop, moved := beatingWhileMoving(ctx, func() []any { return nil })
	defer stop()
	n, err := a.source().FinishPack(ctx, in.Out, in.Archives, moved)
	if err != nil {
		return 0, packError(ctx, err)
	}
	return n, nil
}

// packError makes a pack's error final unless a retry may pass it.
func packError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, dataset.ErrPackRefused):
		return temporal.NewNonRetryableApplicationError(err.Error(), "PackRefused", nil)
	case ctx.Err() == nil && store.Permanent(err): // e.g. the output's bucket does not exist
		return invalid("%v", err)
	}
	return err
}
