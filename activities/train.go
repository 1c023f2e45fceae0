package activities

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"go.temporal.io/sdk/activity"

	"dcd/internal/head"
	"dcd/internal/store"
)

// RetrainInput is the retraining recipe and its data.
type RetrainInput struct {
	Run         string
	Model       ModelRef // the target: column "features"
	Classes     []string
	TrainShards int
	DebugShards int
	Lambda      float64
	Iters       int
}

// RetrainResult says where the new head is.
type RetrainResult struct {
	HeadKey string
	Rows    int
	// SkippedLabels counts debug-train images whose weak label is not a
	// class of the model.
	SkippedLabels int
}

// Retrain fits a new softmax head on the target's frozen features of
// train ∪ debug-train, the debug-train images carrying their weak labels.
func (a *Activities) Retrain(ctx context.Context, in RetrainInput) (RetrainResult, error) {
	res := RetrainResult{HeadKey: RunKey(in.Run, "model/head.json")}
	rows := &head.Slice{}
	if _, err := a.appendRows(ctx, rows, in.Run, Train, in.TrainShards, in.Model, in.Classes, true); err != nil {
		return res, err
	}
	var err error
	if res.SkippedLabels, err = a.appendRows(ctx, rows, in.Run, DebugTrain, in.DebugShards, in.Model, in.Classes, false); err != nil {
		return res, err
	}
	res.Rows = len(rows.Y)
	activity.RecordHeartbeat(ctx, "training")
	h, err := head.Train(rows, head.Options{Classes: len(in.Classes), Lambda: in.Lambda, Iters: in.Iters})
	if err != nil {
		return res, invalid("retrain: %v", err)
	}
	data, _ := json.Marshal(h)
	return res, store.WriteAll(ctx, a.Bucket, res.HeadKey, data)
}

// appendRows adds a dataset's features with class indices to rows. With
// strict, an unknown label is an error naming the image; otherwise the image
// is skipped and counted.
func (a *Activities) appendRows(ctx context.Context, rows *head.Slice, run, ds string, shards int, m ModelRef, classes []string, strict bool) (skipped int, err error) {
	for i := 0; i < shards; i++ {
		items, mat, err := a.loadShard(ctx, run, ds, i, m, "features")
		if err != nil {
			return skipped, err
		}
		for j, it := range items {
			c := slices.Index(classes, it.Label)
			if c < 0 {
				if strict {
					return skipped, invalid("data.%s: image %s has label %q, which is not in classes %q", ds, it.Key, it.Label, classes)
				}
				skipped++
				continue
			}
			rows.X = append(rows.X, mat.Row(j))
			rows.Y = append(rows.Y, c)
		}
	}
	return skipped, nil
}

// EvaluateInput names what to evaluate.
type EvaluateInput struct {
	Run            string
	Model          ModelRef // the target: columns "features" and "logits"
	Classes        []string
	TestShards     int
	HeldoutShards  int
	HeadKey        string
	DebugTrainSize int
	Precision      *float64
}

// Method is one row of the result table.
type Method struct {
	Method             string   `json:"method"`
	TestAccuracy       float64  `json:"test_accuracy"`
	HeldoutAccuracy    float64  `json:"heldout_accuracy"`
	DebugTrainSize     int      `json:"debug_train_size"`
	SelectionPrecision *float64 `json:"selection_precision"`
}

// Eval is eval.json.
type Eval struct {
	RunID         string   `json:"run_id"`
	Methods       []Method `json:"methods"`
	TestImages    int      `json:"test_images"`
	HeldoutImages int      `json:"heldout_images"`
}

// EvaluateResult says where eval.json is and what it holds.
type EvaluateResult struct {
	Key  string
	Eval Eval
}

// Evaluate measures the model before the pass (its own logits) and after
// (the retrained head) on the clean test set and on E_heldout.
func (a *Activities) Evaluate(ctx context.Context, in EvaluateInput) (EvaluateResult, error) {
	res := EvaluateResult{Key: RunKey(in.Run, "eval.json")}
	data, err := store.ReadAll(ctx, a.Bucket, in.HeadKey)
	if err != nil {
		return res, store.Classify(err, in.HeadKey)
	}
	var h head.Head
	if err := json.Unmarshal(data, &h); err != nil {
		return res, fmt.Errorf("activities: %s: %w", in.HeadKey, err)
	}
	before := Method{Method: "none"}
	after := Method{Method: "dcd", DebugTrainSize: in.DebugTrainSize, SelectionPrecision: in.Precision}
	for _, ds := range []struct {
		name   string
		shards int
		n      *int
		acc    func(m *Method) *float64
	}{
		{Test, in.TestShards, &res.Eval.TestImages, func(m *Method) *float64 { return &m.TestAccuracy }},
		{ErrorHeldout, in.HeldoutShards, &res.Eval.HeldoutImages, func(m *Method) *float64 { return &m.HeldoutAccuracy }},
	} {
		var n, okBefore, okAfter int
		for i := 0; i < ds.shards; i++ {
			items, feats, err := a.loadShard(ctx, in.Run, ds.name, i, in.Model, "features")
			if err != nil {
				return res, err
			}
			_, logits, err := a.loadShard(ctx, in.Run, ds.name, i, in.Model, "logits")
			if err != nil {
				return res, err
			}
			for j, it := range items {
				c := slices.Index(in.Classes, it.Label)
				if c < 0 {
					return res, invalid("data.%s: image %s has label %q, which is not in classes %q", ds.name, it.Key, it.Label, in.Classes)
				}
				n++
				if argmax(logits.Row(j)) == c {
					okBefore++
				}
				if h.Predict(feats.Row(j)) == c {
					okAfter++
				}
			}
		}
		if n == 0 {
			return res, invalid("data.%s: no image could be embedded, so there is nothing to evaluate on", ds.name)
		}
		*ds.n = n
		*ds.acc(&before) = float64(okBefore) / float64(n)
		*ds.acc(&after) = float64(okAfter) / float64(n)
	}
	res.Eval.RunID = in.Run
	res.Eval.Methods = []Method{before, after}
	out, _ := json.MarshalIndent(res.Eval, "", "  ")
	return res, store.WriteAll(ctx, a.Bucket, res.Key, out)
}

func argmax(v []float32) int {
	best := 0
	for i, x := range v {
		if x > v[best] {
			best = i
		}
	}
	return best
}
