package activities

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"gocloud.dev/gcerrors"

	"dcd/internal/dataset"
	"dcd/internal/features"
	"dcd/internal/head"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/schemas"
)

// MethodDataset is the dataset name under which a method's debug-train
// images are planned and embedded with the target.
func MethodDataset(method string) string {
	if method == schemas.MethodDCD {
		return DebugTrain
	}
	return DebugTrain + "-" + strings.ReplaceAll(method, ":", "-")
}

// ExportProbabilities is the softmax output of an exported model.
const ExportProbabilities = "probabilities"

// DebugSet is the rows a method adds to train: the target's features of a
// dataset's shards, limited to the images of a manifest.
type DebugSet struct {
	Dataset string
	Shards  int
	// Keep is a manifest (uri,label[,domain]) of the images to use; empty:
	// every image of the dataset.
	Keep string
}

// RetrainInput is one method's retraining: the recipe and its data.
type RetrainInput struct {
	Run         string
	Method      string
	Model       ModelRef // the target: column "features"
	Classes     []string
	TrainShards int
	// Debug is nil for train_only.
	Debug       *DebugSet
	Recipe      schemas.Retrain
	Seed        uint64
	ErrorDomain string
	// Export also writes the target with the new head as one ONNX file
	// (head.ONNX): outputs features and logits under the target's tensor
	// names, and probabilities.
	Export bool
}

// RetrainResult says where the new head is and what it was trained on.
type RetrainResult struct {
	HeadKey  string
	ModelKey string // the exported model, when asked for
	// ModelError says why a model asked for was not exported: the head
	// and its accuracies stand without it.
	ModelError string `json:",omitempty"`
	TrainRows  int
	DebugRows  int
	// SkippedLabels counts debug-train images whose weak label is not a
	// class of the model; SkippedExamples are a few of those labels.
	SkippedLabels   int
	SkippedExamples []string `json:",omitempty"`
	// Unlearned counts the classes no row had (of train or the debug
	// set), which the head never predicts; UnlearnedExamples are a few.
	Unlearned         int      `json:",omitempty"`
	UnlearnedExamples []string `json:",omitempty"`
	// Precision is the share of debug rows from ErrorDomain, nil when the
	// rows carry no domain; Domains are a few of the rows' domains.
	Precision *float64
	Domains   []string `json:",omitempty"`
	// Streamed is true when the rows did not fit retrain.memory_mb and
	// were re-read from storage on every pass.
	Streamed bool
	Seconds  float64
}

// MaxSkippedExamples is the most labels RetrainResult.SkippedExamples
// names.
const MaxSkippedExamples = 3

// Retrain fits a new softmax head on the target's frozen features of train
// ∪ debug-train (the debug rows with their weak labels and the recipe's
// debug weight). The rows stream from the feature files (featureRows).
func (a *Activities) Retrain(ctx context.Context, in RetrainInput) (RetrainResult, error) {
	start := time.Now()
	res := RetrainResult{HeadKey: MethodKey(in.Run, in.Method, "head.json")}
	r := in.Recipe
	sets := []rowSet{{ds: Train, shards: in.TrainShards, weight: 1, strict: true}}
	if in.Debug != nil {
		set := rowSet{ds: in.Debug.Dataset, shards: in.Debug.Shards, weight: float32(r.DebugWeight)}
		if in.Debug.Keep != "" {
			keep, err := a.manifestRows(ctx, in.Debug.Keep)
			if err != nil {
				return res, err
			}
			set.keep = keep
		}
		sets = append(sets, set)
	}
	rows, st, err := a.newFeatureRows(ctx, in.Run, in.Model, in.Classes, sets, int64(r.MemoryMB)<<20, in.ErrorDomain)
	if err != nil {
		return res, err
	}
	res.TrainRows, res.SkippedLabels, res.SkippedExamples, res.Streamed = st.rows[0], st.skipped, st.skippedLabels, rows.cached == nil
	for c, n := range st.perClass {
		if n > 0 {
			continue
		}
		if res.Unlearned++; len(res.UnlearnedExamples) < MaxSkippedExamples {
			res.UnlearnedExamples = append(res.UnlearnedExamples, in.Classes[c])
		}
	}
	if len(st.rows) > 1 {
		res.DebugRows = st.rows[1]
		if in.ErrorDomain != "" && st.known[1] && res.DebugRows > 0 {
			p := float64(st.domain[1]) / float64(res.DebugRows)
			res.Precision, res.Domains = &p, st.domains[1]
		}
	}
	if res.TrainRows == 0 {
		return res, invalid("data.train: no image could be embedded, so there is nothing to retrain on")
	}
	// The rows heartbeat after each feature file they give; a file of a
	// large shard through a large head (10,000 rows × 1,000 classes ×
	// 2,048 features, 80 GFLOP a pass in mini-batches) outlasts a
	// heartbeat timeout, so beat meanwhile too, while files keep coming:
	// a streamed file's read that stalls is not kept alive to the
	// activity's timeout. The rows still stop at the next file when the
	// pass is cancelled.
	stop, moved := beatingWhileMoving(ctx, func() []any { return nil })
	defer stop() // (a panic, which Temporal recovers, must stop it too)
	rows.moved = moved
	h, err := head.Train(rows, head.Options{
		Classes: len(in.Classes), Lambda: r.Lambda, Iters: r.Iters, ClassBalanced: r.ClassBalanced,
		MiniBatch: r.Mode == schemas.MiniBatch, Epochs: r.Epochs, BatchSize: r.BatchSize, LearningRate: r.LearningRate,
		Seed: in.Seed,
	})
	stop()
	if err != nil {
		var read *readError
		switch {
		case ctx.Err() != nil:
			return res, ctx.Err()
		case errors.As(err, &read):
			return res, read.err
		}
		return res, invalid("retrain %s: %v", in.Method, err)
	}
	data, err := json.Marshal(h)
	if err != nil { // a NaN or an infinity, which JSON has no word for
		return res, invalid("retrain %s: the fitted head is not finite (%v): the fit diverged; lower retrain.learning_rate", in.Method, err)
	}
	if err := store.WriteAll(ctx, a.Bucket, res.HeadKey, data); err != nil {
		return res, err
	}
	if in.Export {
		// A backbone of a GB is read, rewritten and written back.
		defer beating(ctx, func() []any { return nil })()
		target, err := ReadModel(ctx, a.buckets(), a.Bucket, in.Model.Path)
		if err != nil && (ctx.Err() != nil || store.Transient(err)) {
			return res, err // retried: the head, written, is fitted again
		}
		if len(in.Model.Spec.Outputs) < 2 {
			return res, invalid("export %s: the target's spec names outputs %q, want features and logits", in.Method, in.Model.Spec.Outputs)
		}
		names := head.NewExportNames(in.Model.Spec.Outputs[0], in.Model.Spec.Outputs[1], ExportProbabilities, in.Classes)
		names.Input, names.Preprocess = in.Model.Spec.Input, in.Model.Spec.Preprocess
		var model []byte
		switch got := digest(target); {
		case err != nil:
			// Gone, forbidden or past 2 GiB since the pass checked it:
			// evaluated on cached features, the results stand.
			err = fmt.Errorf("cannot read it: %w", err)
		case got != in.Model.Spec.ModelDigest:
			// The head was fitted on the features of the model the pass
			// started with; on another backbone its logits would not be
			// those evaluated.
			err = fmt.Errorf("the model changed during the pass (digest %s, the pass started with %s)", got, in.Model.Spec.ModelDigest)
		default:
			model, err = h.ONNX(target, names)
		}
		if err != nil {
			// A graph the export cannot rewrite (an old opset, a kept
			// tensor of a new output's name) is no reason to drop the
			// pass's results. A model an earlier pass under this ID
			// exported goes: it holds another head.
			res.ModelError = fmt.Sprintf("%s with this head: %v", in.Model.Path, err)
			if err := a.Bucket.Delete(ctx, MethodKey(in.Run, in.Method, "model.onnx")); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				return res, err
			}
		} else {
			res.ModelKey = MethodKey(in.Run, in.Method, "model.onnx")
			if err := store.WriteAll(ctx, a.Bucket, res.ModelKey, model); err != nil {
				return res, err
			}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// manifestRows counts the rows of a manifest written by this package by
// item key and label (keptRow): an image the pool lists twice may be kept
// once, or with one of its labels.
func (a *Activities) manifestRows(ctx context.Context, key string) (map[string]int, error) {
	rows, err := a.readManifest(ctx, key)
	if err != nil {
		return nil, err
	}
	counts := make(map[string]int, len(rows))
	for _, r := range rows {
		counts[keptRow(r.key, r.label)]++
	}
	return counts, nil
}

// keptRow is how manifestRows counts a row.
func keptRow(key, label string) string { return key + "\n" + label }

// EvaluateInput is one method to score on test and E_heldout.
type EvaluateInput struct {
	Run           string
	Method        string
	Model         ModelRef // the target: columns "features" and "logits"
	Classes       []string
	TestShards    int
	HeldoutShards int
	// HeadKey is a retrained head applied to the target's features.
	HeadKey string
	// Scores is a model (an external trainer's) whose "logits" column,
	// embedded for the test and E_heldout shards, scores each image. With
	// neither HeadKey nor Scores, the target's own logits do.
	Scores *ModelRef
}

// Method is one row of the result table (eval.json's methods).
type Method struct {
	Method          string  `json:"method"`
	TestAccuracy    float64 `json:"test_accuracy"`
	HeldoutAccuracy float64 `json:"heldout_accuracy"`
	// DebugTrainSize is the images the method added to train (its
	// debug-train manifest; for all_pool, every pool image that embedded).
	DebugTrainSize int `json:"debug_train_size"`
	// SelectionPrecision is the share from selection.error_domain of the
	// debug rows retrained on (DebugRows), or, with an external trainer,
	// which reports no rows, of the images selected (all_pool's: null);
	// null without ground truth.
	SelectionPrecision *float64 `json:"selection_precision"`
	// WallSeconds is the method's own work: selection, guards,
	// retraining (or the external trainer) and evaluation; the shared pool
	// scan and feature embedding are not counted.
	WallSeconds float64 `json:"wall_seconds"`
	// TestPerClass and HeldoutPerClass are accuracies in Eval.Classes
	// order, null for a class without images.
	TestPerClass    []*float64 `json:"test_per_class"`
	HeldoutPerClass []*float64 `json:"heldout_per_class"`
	// TrainRows and DebugRows are the rows the head was fitted on (images
	// that embedded, with a known label).
	TrainRows int `json:"train_rows,omitempty"`
	DebugRows int `json:"debug_rows,omitempty"`
	// SkippedLabels counts the method's images left out of retraining
	// because their weak label is not a class of the target.
	SkippedLabels int `json:"skipped_labels,omitempty"`
	// Duplicates and Leaks count selected images the guards removed:
	// near-duplicates, and near-copies of test or E_heldout images.
	Duplicates int `json:"duplicates,omitempty"`
	Leaks      int `json:"leaks,omitempty"`
	// DebugTrain, Head and Model are the method's files: its debug-train
	// manifest, its head (built-in recipe) and its ONNX classifier.
	DebugTrain string `json:"debug_train,omitempty"`
	Head       string `json:"head,omitempty"`
	Model      string `json:"model,omitempty"`
	// ModelError says why no model was exported where one was asked for.
	ModelError string `json:"model_error,omitempty"`
	// Note says what a selection could not do as asked (SelectResult).
	Note string `json:"note,omitempty"`
	// Log is the external trainer's output.
	Log string `json:"log,omitempty"`
}

// Eval is eval.json.
type Eval struct {
	RunID         string   `json:"run_id"`
	Methods       []Method `json:"methods"`
	TestImages    int      `json:"test_images"`
	HeldoutImages int      `json:"heldout_images"`
	Classes       []string `json:"classes,omitempty"`
	// TestPerClassImages and HeldoutPerClassImages count images per class.
	TestPerClassImages    []int `json:"test_per_class_images,omitempty"`
	HeldoutPerClassImages []int `json:"heldout_per_class_images,omitempty"`
	// Incomplete marks the eval.json of a pass that failed: Methods are
	// those that finished before Failed did (the others were stopped).
	Incomplete bool     `json:"incomplete,omitempty"`
	Failed     []string `json:"failed,omitempty"`
}

// Totals is e without its per-class accuracies and counts.
func (e Eval) Totals() Eval {
	e.TestPerClassImages, e.HeldoutPerClassImages = nil, nil
	e.Methods = slices.Clone(e.Methods)
	for i := range e.Methods {
		e.Methods[i].TestPerClass, e.Methods[i].HeldoutPerClass = nil, nil
	}
	return e
}

// Method returns the row of a method, or false.
func (e Eval) Method(name string) (Method, bool) {
	i := slices.IndexFunc(e.Methods, func(m Method) bool { return m.Method == name })
	if i < 0 {
		return Method{}, false
	}
	return e.Methods[i], true
}

// EvaluateResult is one method's scores.
type EvaluateResult struct {
	TestAccuracy, HeldoutAccuracy             float64
	TestPerClass, HeldoutPerClass             []*float64
	TestImages, HeldoutImages                 int
	TestPerClassImages, HeldoutPerClassImages []int
	Seconds                                   float64
}

// Evaluate scores one method on the clean test set and on E_heldout.
func (a *Activities) Evaluate(ctx context.Context, in EvaluateInput) (EvaluateResult, error) {
	start := time.Now()
	var res EvaluateResult
	var h *head.Head
	if in.HeadKey != "" {
		data, err := store.ReadAll(ctx, a.Bucket, in.HeadKey)
		if err != nil {
			return res, store.Classify(err, in.HeadKey)
		}
		h = &head.Head{}
		if err := json.Unmarshal(data, h); err != nil {
			return res, invalid("%s: %v", in.HeadKey, err)
		}
		if err := h.Check(); err != nil {
			return res, invalid("%s: %v", in.HeadKey, err)
		}
	}
	m, column, classify := in.scorer(h)
	type score struct {
		name         string
		shards       int
		acc          *float64
		perClass     *[]*float64
		n            *int
		perN         *[]int
		total, right []int
		ok           int
	}
	sets := []*score{
		{name: Test, shards: in.TestShards, acc: &res.TestAccuracy, perClass: &res.TestPerClass, n: &res.TestImages, perN: &res.TestPerClassImages},
		{name: ErrorHeldout, shards: in.HeldoutShards, acc: &res.HeldoutAccuracy, perClass: &res.HeldoutPerClass, n: &res.HeldoutImages, perN: &res.HeldoutPerClassImages},
	}
	var read []shardSet
	for _, ds := range sets {
		ds.total, ds.right = make([]int, len(in.Classes)), make([]int, len(in.Classes))
		read = append(read, shardSet{ds.name, ds.shards})
	}
	empty := func(ds *score) error {
		// Why, by its first shard's first reject (it has one, as it has
		// no image).
		why := ""
		if _, rejects, err := a.shardRejects(ctx, in.Run, ds.name, 0, m.Spec); err == nil && len(rejects) > 0 {
			why = fmt.Sprintf(" (the first, %s: %s)", redact.URL(rejects[0].URI), redact.Text(rejects[0].Reason))
		}
		return invalid("data.%s: no image could be embedded%s, so there is nothing to evaluate on", ds.name, why)
	}
	classes := dataset.NewClasses(in.Classes)
	err := a.eachShardOf(ctx, in.Run, read, m, column, func(set, i int, s loadedShard) error {
		ds := sets[set]
		if set > 0 && i == 0 && *sets[set-1].n == 0 { // as soon as it is known
			return empty(sets[set-1])
		}
		if len(s.items) == 0 {
			return nil
		}
		predict, err := classify(ShardKey(in.Run, ds.name, i), s.mat)
		if err != nil {
			return err
		}
		for j, it := range s.items {
			c := classes.Index(it.Label)
			if c < 0 {
				return offClass(ds.name, it, classes)
			}
			*ds.n++
			ds.total[c]++
			if predict(j) == c {
				ds.ok++
				ds.right[c]++
			}
		}
		heartbeat(ctx, ds.name, i)
		return nil
	})
	if err != nil {
		return res, err
	}
	for _, ds := range sets {
		if *ds.n == 0 {
			return res, empty(ds)
		}
		*ds.acc, *ds.perN = float64(ds.ok)/float64(*ds.n), ds.total
		*ds.perClass = make([]*float64, len(in.Classes))
		for c := range ds.total {
			if ds.total[c] > 0 {
				v := float64(ds.right[c]) / float64(ds.total[c])
				(*ds.perClass)[c] = &v
			}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

// scorer is how Evaluate scores a set: the model and column it reads,
// and, for a shard's rows of that column, the class each row gets.
func (in EvaluateInput) scorer(h *head.Head) (ModelRef, string, func(shard string, rows *features.Matrix) (func(int) int, error)) {
	switch {
	case in.Scores != nil:
		return *in.Scores, "logits", func(shard string, scores *features.Matrix) (func(int) int, error) {
			if scores.Dim != len(in.Classes) {
				return nil, invalid("the model %s gives %d class scores per image (%s), but there are %d classes", in.Scores.Path, scores.Dim, shard, len(in.Classes))
			}
			return func(j int) int { return argmax(scores.Row(j)) }, nil
		}
	case h != nil:
		return in.Model, "features", func(shard string, feats *features.Matrix) (func(int) int, error) {
			if feats.Dim != h.Dim {
				return nil, invalid("head %s takes %d features, the target gives %d (%s)", in.HeadKey, h.Dim, feats.Dim, shard)
			}
			return func(j int) int { return h.Predict(feats.Row(j)) }, nil
		}
	default:
		return in.Model, "logits", func(shard string, logits *features.Matrix) (func(int) int, error) {
			if logits.Dim != len(in.Classes) {
				// Scored anyway, logit c would count as class c of a list
				// that is not the model's: an accuracy, and a wrong one.
				return nil, invalid("classes: there are %d, but the target %s gives %d logits per image (%s); list the model's classes, in its output's order", len(in.Classes), in.Model.Path, logits.Dim, shard)
			}
			return func(j int) int { return argmax(logits.Row(j)) }, nil
		}
	}
}

// WriteEvalInput is the pass's result table.
type WriteEvalInput struct {
	Run  string
	Eval Eval
}

// WriteEval writes runs/<id>/eval.json and returns its key. That of a
// pass failed by a method (Incomplete) removes the report and rejects.csv
// an earlier pass under the ID left, which would contradict it: a failed
// pass writes none.
func (a *Activities) WriteEval(ctx context.Context, in WriteEvalInput) (string, error) {
	key := RunKey(in.Run, "eval.json")
	out, err := json.MarshalIndent(in.Eval, "", "  ")
	if err != nil {
		return key, fmt.Errorf("activities: eval.json: %w", err)
	}
	if err := store.WriteAll(ctx, a.Bucket, key, out); err != nil || !in.Eval.Incomplete {
		return key, err
	}
	for _, stale := range []string{RunKey(in.Run, "report.html"), RunKey(in.Run, "rejects.csv")} {
		if err := a.Bucket.Delete(ctx, stale); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return key, store.Classify(err, stale)
		}
	}
	return key, nil
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
