package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"

	"dcd/internal/dataset"
	"dcd/internal/ortrun"
	"dcd/internal/store"
	"dcd/schemas"
)

// CheckModelsInput is the pass's models as configured.
type CheckModelsInput struct {
	Target schemas.Model
	// Similarity is nil when the target's features serve for similarity.
	Similarity *schemas.Model
}

// CheckModelsResult pins the models the pass will use.
type CheckModelsResult struct {
	// Target yields the columns "features" and "logits".
	Target ModelRef
	// Similarity yields the column "features"; it equals Target when the
	// config names no similarity model, so the pool is embedded once.
	Similarity ModelRef
}

// CheckModels reads each model, records its digest, fills the
// preprocessing the config leaves out from the model's input shape, makes
// inner tensors the config names readable (onnx.ExposeOutputs), and runs the
// model once to learn each output's values per image, so a wrong name or
// size fails before any image is read.
func (a *Activities) CheckModels(ctx context.Context, in CheckModelsInput) (CheckModelsResult, error) {
	target, err := a.checkModel(ctx, "target", in.Target, []string{in.Target.Features, in.Target.Logits}, []string{"features", "logits"})
	if err != nil {
		return CheckModelsResult{}, err
	}
	res := CheckModelsResult{Target: target, Similarity: target}
	if in.Similarity != nil {
		s := *in.Similarity
		res.Similarity, err = a.checkModel(ctx, "similarity", s, []string{s.Features}, []string{"features"})
	}
	return res, err
}

func (a *Activities) checkModel(ctx context.Context, field string, m schemas.Model, outputs, columns []string) (ModelRef, error) {
	data, err := store.ReadAll(ctx, a.Bucket, m.Path)
	if err != nil {
		if c := store.Classify(err, m.Path); c != err {
			return ModelRef{}, invalid("config: %s.path: cannot read model %q: %v", field, m.Path, err)
		}
		return ModelRef{}, err
	}
	sum := digest(data)
	use, _ := json.Marshal(struct {
		Model            schemas.Model
		Outputs, Columns []string
	}{m, outputs, columns})
	key := sum + string(use)
	if ref, ok := a.Sessions.checkedModel(key); ok {
		return ref, nil
	}
	ins, _, err := ortrun.Describe(data)
	if err != nil {
		return ModelRef{}, invalid("config: %s.path: %q is not an ONNX model ONNX Runtime can load: %v", field, m.Path, err)
	}
	input := m.Input
	if input == "" {
		if len(ins) != 1 {
			return ModelRef{}, invalid("config: %s.input: model %q has %d inputs, name the image input", field, m.Path, len(ins))
		}
		input = ins[0].Name
	}
	if !slices.ContainsFunc(ins, func(io ortrun.IO) bool { return io.Name == input }) {
		return ModelRef{}, invalid("config: %s.input: model %q has no input %q (inputs: %s)", field, m.Path, input, names(ins))
	}
	ref, err := a.checkModelSpec(field, m, data, sum, ins, input, outputs, columns)
	if err == nil {
		a.Sessions.rememberModel(key, ref)
	}
	return ref, err
}

func names(ios []ortrun.IO) string {
	var s []string
	for _, io := range ios {
		s = append(s, fmt.Sprintf("%q %v", io.Name, io.Dimensions))
	}
	return fmt.Sprint(s)
}

// PlanInput is one dataset to cut into shards.
type PlanInput struct {
	Run       string
	Name      string // train, test, error_sample, error_heldout, pool, debug_train
	Dataset   schemas.Dataset
	ShardSize int
}

// PlanResult counts what was planned.
type PlanResult struct {
	Shards int
	Images int
}

// Plan lists a dataset and writes its shard manifests, and for the pool
// its ShardIndex. The listing streams: it holds the shards being written
// and what it reads ahead (dataset.Source.Cut), whatever the dataset's
// size, beside the index's ID per shard.
func (a *Activities) Plan(ctx context.Context, in PlanInput) (PlanResult, error) {
	var firsts []int64
	res, err := a.plan(ctx, in.Run, in.Name, in.Dataset, func(it dataset.Item, n int) bool {
		if n == 1 {
			firsts = append(firsts, it.ID)
		}
		return dataset.EndsShard(it.Key, n, in.ShardSize)
	})
	if err != nil && !retried(ctx, err) {
		return res, invalid("data.%s: %v", in.Name, err)
	}
	if err == nil && in.Name == Pool {
		data, _ := json.Marshal(ShardIndex{FirstIDs: firsts})
		err = store.WriteAll(ctx, a.Bucket, ShardIndexKey(in.Run, in.Name), data)
	}
	return res, err
}

// ShardIndex is where each shard of a planned dataset begins: shard i
// holds the items with IDs from FirstIDs[i] up to FirstIDs[i+1].
type ShardIndex struct {
	FirstIDs []int64 `json:"first_ids"`
}

// ShardIndexKey is the ShardIndex of a dataset in a run.
func ShardIndexKey(run, ds string) string {
	return fmt.Sprintf("runs/%s/shards/%s/index.json", run, ds)
}

// numbers says whether the index numbers a pool of the given shards and
// images as a plan does: ids from 0, each shard's first after the last's,
// all below the pool's size. shardOf relies on it.
func (x ShardIndex) numbers(shards, images int) bool {
	if len(x.FirstIDs) != shards || shards == 0 || x.FirstIDs[0] != 0 || x.FirstIDs[shards-1] >= int64(images) {
		return false
	}
	for i := 1; i < shards; i++ {
		if x.FirstIDs[i] <= x.FirstIDs[i-1] {
			return false
		}
	}
	return true
}

// shardOf is the shard holding the item with this ID.
func (x ShardIndex) shardOf(id int64) int {
	i, found := slices.BinarySearch(x.FirstIDs, id)
	if !found {
		i--
	}
	return i
}

// plan writes the shard manifests of ds as ShardKey(run, name, i), ending
// a shard after the item for which end, given the shard's length, is true
// (dataset.Source.Cut). It heartbeats on a ticker: a shard's first item
// can take longer than the timeout to come (a WebDataset's archives read
// whole the first time, a long folder's listing).
func (a *Activities) plan(ctx context.Context, run, name string, ds schemas.Dataset, end func(it dataset.Item, n int) bool) (PlanResult, error) {
	var mu sync.Mutex
	var res PlanResult
	defer beating(ctx, func() []any {
		mu.Lock()
		defer mu.Unlock()
		return []any{res}
	})()
	shards, images, err := a.source().Cut(ctx, ds, end, func(ctx context.Context, i int, manifest []byte) error {
		return store.WriteAll(ctx, a.Bucket, ShardKey(run, name, i), manifest)
	}, func(shards, images int) {
		mu.Lock()
		res = PlanResult{Shards: shards, Images: images}
		mu.Unlock()
	})
	return PlanResult{Shards: shards, Images: images}, err
}

// retried says whether Temporal should try err's activity again: it was
// cancelled, or storage failed in a way that may pass.
func retried(ctx context.Context, err error) bool {
	return ctx.Err() != nil || store.Transient(err)
}
