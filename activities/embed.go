package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/apache/arrow/go/v15/arrow"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"gocloud.dev/gcerrors"

	"dcd/internal/embed"
	"dcd/internal/features"
	"dcd/internal/store"
	"dcd/schemas"
)

// EmbedShardInput is one shard of one dataset to embed with one model.
type EmbedShardInput struct {
	Run       string
	Dataset   string
	Shard     int
	Model     ModelRef
	BatchSize int
	// PartSize is how many images are committed to storage at a time; a
	// retried attempt resumes after the last committed part.
	PartSize int
	// K > 0 (pool shards): search the features, cached or just embedded,
	// for the K nearest images per query right away, as TopKShard would,
	// so a shard costs one activity instead of two.
	K int
	// CachedOnly only looks in the cache: a shard that is not cached is
	// left alone (Cached false), for the embedding queue to embed.
	CachedOnly bool
}

// EmbedShardResult says where the features are and how the work went.
type EmbedShardResult struct {
	FeatureKey string
	Images     int // embedded
	Rejects    int // skipped: unreadable or undecodable
	Cached     bool
	// ResumedFrom is the number of images a previous attempt had already
	// committed; 0 when this attempt started from the beginning.
	ResumedFrom int
	// TopK is the search of the shard (EmbedShardInput.K); nil when the
	// shard still needs TopKShard.
	TopK *TopKShardResult `json:",omitempty"`
}

// embedProgress is the heartbeat: parts before NextPart are in storage.
type embedProgress struct {
	NextPart int
}

// rejectsKey holds a feature file's rejected images, cached beside it.
func rejectsKey(featureKey string) string { return featureKey + ".rejects.json" }

func partKey(featureKey string, part int) string {
	return fmt.Sprintf("%s.parts/%06d.arrow", featureKey, part)
}

// EmbedShard computes a shard's features, unless the cache already has them
// for this model and shard content. It works in parts: each part is written
// to storage, then heartbeaten, so a worker that dies mid-shard costs at most
// one part when the retry resumes.
func (a *Activities) EmbedShard(ctx context.Context, in EmbedShardInput) (EmbedShardResult, error) {
	start := time.Now()
	shardKey := ShardKey(in.Run, in.Dataset, in.Shard)
	shard, err := a.readShard(ctx, shardKey)
	if err != nil {
		return EmbedShardResult{}, err
	}
	key := features.Key(in.Model.Spec, shard.Digest())
	res := EmbedShardResult{FeatureKey: key}
	if rejects, ok, err := a.cachedRejects(ctx, key); err != nil {
		return res, err
	} else if ok {
		res.Cached, res.Rejects, res.Images = true, len(rejects), len(shard.Items)-len(rejects)
		if in.K > 0 && in.Dataset == Pool {
			r, err := a.topKShard(ctx, TopKShardInput{Run: in.Run, Shard: in.Shard, Model: in.Model, K: in.K}, shard)
			if err != nil {
				return res, err
			}
			r.Started, r.Took = start, time.Since(start)
			res.TopK = &r
		}
		return res, nil
	}
	if in.CachedOnly {
		return res, nil
	}

	sess, err := a.session(ctx, in.Model)
	if err != nil {
		return res, err
	}
	e := &embed.Embedder{Name: in.Model.Path, Session: sess, Spec: in.Model.Spec.Preprocess, BatchSize: in.BatchSize, Decoders: a.Decoders}
	partSize := max(in.PartSize, 1)
	nParts := (len(shard.Items) + partSize - 1) / partSize

	var progress embedProgress
	if activity.HasHeartbeatDetails(ctx) {
		if err := activity.GetHeartbeatDetails(ctx, &progress); err == nil {
			res.ResumedFrom = min(progress.NextPart*partSize, len(shard.Items))
			activity.GetLogger(ctx).Info("resuming shard", "shard", shardKey, "part", progress.NextPart, "images", res.ResumedFrom)
		}
	}
	for p := progress.NextPart; p < nParts; p++ {
		items := shard.Items[p*partSize : min((p+1)*partSize, len(shard.Items))]
		images := make([]embed.Image, len(items))
		for i, it := range items {
			images[i] = embed.Image{ID: it.ID, URI: it.Key, Label: it.Label, Domain: it.Domain}
		}
		if err := a.embedPart(ctx, e, in.Model, shardKey, images, partKey(key, p), embedProgress{NextPart: p}); err != nil {
			return res, err
		}
		activity.RecordHeartbeat(ctx, embedProgress{NextPart: p + 1})
	}
	res, err = a.commitShard(ctx, key, nParts, len(shard.Items), res)
	if err != nil || in.K <= 0 || in.Dataset != Pool {
		return res, err
	}
	// Search the new features here too, sparing the shard a TopKShard
	// activity; a retry after a failed search finds the shard cached.
	r, err := a.topKShard(ctx, TopKShardInput{Run: in.Run, Shard: in.Shard, Model: in.Model, K: in.K}, shard)
	if err != nil {
		return res, err
	}
	res.TopK = &r
	return res, nil
}

// embedPart embeds images of shard into one part file and its rejects
// beside it, heartbeating the progress so far after each batch. An output
// that is not finite, or whose size differs from what the pass measured,
// fails without retries, naming the model and the shard.
func (a *Activities) embedPart(ctx context.Context, e *embed.Embedder, m ModelRef, shard string, images []embed.Image, key string, progress embedProgress) error {
	columns := m.Spec.Columns
	var recs []arrow.Record
	defer func() {
		for _, r := range recs {
			r.Release()
		}
	}()
	var dims []int
	rejects, err := e.Embed(ctx, images, a.read, func(b embed.Batch) error {
		if err := m.checkDims(shard, b.Dims); err != nil {
			return err
		}
		recs = append(recs, features.Record(a.Mem, columns, b))
		dims = b.Dims
		activity.RecordHeartbeat(ctx, progress)
		return nil
	})
	if err != nil {
		var appErr *temporal.ApplicationError
		if errors.As(err, &appErr) {
			return err
		}
		if oe := outputError(err, shard); oe != nil {
			return oe
		}
		return fmt.Errorf("activities: embed %s: %w", key, err)
	}
	if rejects == nil {
		rejects = []embed.Reject{}
	}
	rj, _ := json.Marshal(rejects)
	if err := store.WriteAll(ctx, a.Bucket, rejectsKey(key), rj); err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil // every image rejected: no part file
	}
	return store.WriteArrow(ctx, a.Bucket, key, schemas.Features(columns, dims), a.Mem, recs...)
}

// commitShard concatenates the parts into the feature file, writes the
// shard's rejects, and removes the parts. The feature file is written last:
// its rejects file marks the cache entry complete.
func (a *Activities) commitShard(ctx context.Context, key string, nParts, total int, res EmbedShardResult) (EmbedShardResult, error) {
	var all []embed.Reject
	var w *store.ArrowWriter
	for p := 0; p < nParts; p++ {
		rk := rejectsKey(partKey(key, p))
		data, err := store.ReadAll(ctx, a.Bucket, rk)
		if err != nil {
			return res, store.Classify(err, rk)
		}
		var rejects []embed.Reject
		if err := json.Unmarshal(data, &rejects); err != nil {
			return res, fmt.Errorf("activities: %s: %w", rk, err)
		}
		all = append(all, rejects...)
		ok, err := store.Exists(ctx, a.Bucket, partKey(key, p))
		if err != nil || !ok {
			if err != nil {
				return res, err
			}
			continue
		}
		f, err := store.OpenArrow(ctx, a.Bucket, partKey(key, p), a.Mem)
		if err != nil {
			return res, err
		}
		if w == nil {
			if w, err = store.NewArrowWriter(ctx, a.Bucket, key, f.Schema(), a.Mem); err != nil {
				f.Close()
				return res, err
			}
		}
		for i := 0; i < f.NumRecords(); i++ {
			rec, err := f.Record(i)
			if err == nil {
				err = w.Write(rec)
			}
			if err != nil {
				f.Close()
				w.Abort()
				return res, err
			}
		}
		f.Close()
	}
	if w != nil {
		if err := w.Close(); err != nil {
			return res, err
		}
	}
	if all == nil {
		all = []embed.Reject{}
	}
	rj, _ := json.Marshal(all)
	if err := store.WriteAll(ctx, a.Bucket, rejectsKey(key), rj); err != nil {
		return res, err
	}
	for p := 0; p < nParts; p++ {
		a.Bucket.Delete(ctx, partKey(key, p))
		a.Bucket.Delete(ctx, rejectsKey(partKey(key, p)))
	}
	res.Images, res.Rejects = total-len(all), len(all)
	return res, nil
}

// cachedRejects returns the rejects of a complete cache entry, and whether
// there is one.
func (a *Activities) cachedRejects(ctx context.Context, key string) ([]embed.Reject, bool, error) {
	data, err := a.Bucket.ReadAll(ctx, rejectsKey(key))
	if err != nil {
		if c := store.Classify(err, key); isNotFound(c) {
			return nil, false, nil
		}
		return nil, false, err
	}
	var rejects []embed.Reject
	if err := json.Unmarshal(data, &rejects); err != nil {
		return nil, false, nil // a damaged entry is recomputed
	}
	return rejects, true, nil
}

// read fetches an image: a key in the worker's bucket, or an absolute URL
// (s3://bucket/key?region=…, file:///dir/file, …) in a bucket opened once
// per process.
func (a *Activities) read(ctx context.Context, key string) ([]byte, error) {
	data, err := a.buckets().ReadAll(ctx, a.Bucket, key)
	switch gcerrors.Code(err) {
	case gcerrors.NotFound, gcerrors.PermissionDenied, gcerrors.InvalidArgument:
		// The image is gone or forbidden: a reject, not a retry.
		return nil, fmt.Errorf("%w: %w", embed.ErrUnreadable, err)
	}
	return data, err
}
