package schemas

import (
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"strings"
)

// Methods a pass can compare (Config.Compare). A dcd selection variant is
// written "dcd:<name>", <name> a key of selection.variants.
const (
	// MethodNone is the target model as it was, scored by its own logits.
	MethodNone = "none"
	// MethodTrainOnly is the head retrained on train alone with the pass's
	// recipe, to tell the recipe's effect from the data's.
	MethodTrainOnly = "train_only"
	// MethodRandom adds as many uniformly drawn pool images (seeded) as the
	// reference dcd method selected.
	MethodRandom = "random"
	// MethodAllPool adds the whole pool with its weak labels.
	MethodAllPool = "all_pool"
	// MethodDCD adds the targeted selection of section selection.
	MethodDCD = "dcd"
)

// DefaultCompare is the methods of a pass whose config names none, which
// then compares every variant of selection.variants too, "dcd:<name>" in
// the order of the names after these.
var DefaultCompare = []string{MethodNone, MethodTrainOnly, MethodRandom, MethodAllPool, MethodDCD}

// Selection strategies.
const (
	// PerQuery takes each query's K nearest pool images.
	PerQuery = "per_query"
	// Global takes the Budget pool images with the smallest aggregate
	// distance to the queries.
	Global = "global"
	// Threshold takes every candidate whose aggregate distance is at most
	// Threshold.
	Threshold = "threshold"
)

// Aggregations of a pool image's distances to the queries.
const (
	// AggMin is the distance to the nearest query.
	AggMin = "min"
	// AggMean is the mean distance over all queries, where a query that
	// did not keep the image among its scan_k candidates counts with its
	// scan_k-th distance (a lower bound of the true one).
	AggMean = "mean"
)

// Default guard thresholds, as relative squared distances in the target's
// feature space: ‖a−b‖² over the mean squared distance between two test or
// E_heldout images. In the demo, JPEG re-encodings of an image land at
// 2e-5 to 6e-5 from it and the closest distinct images (heavily blurred
// digits, near-identical to the model) at 5e-4 and above.
const (
	DefaultDedupe  = 1.5e-4
	DefaultLeakage = 1.5e-4
)

// Selection is how pool images are chosen for the debug-train set (the
// method "dcd"). Variants, compared as "dcd:<name>", override some fields.
type Selection struct {
	// Strategy is per_query (default), global or threshold.
	Strategy string `json:"strategy,omitempty" yaml:"strategy,omitempty"`
	// K nearest pool images per E_sample query (per_query; default 10).
	K int `json:"k" yaml:"k"`
	// Budget is how many pool images the global strategy takes.
	Budget int `json:"budget,omitempty" yaml:"budget,omitempty"`
	// Threshold is the largest aggregate squared l2 distance (in the
	// similarity model's feature space, as the report shows it) that the
	// threshold strategy takes.
	Threshold float64 `json:"threshold,omitempty" yaml:"threshold,omitempty"`
	// Aggregate ranks a pool image by its distances to the queries: min
	// (default) or mean. Used by global and threshold.
	Aggregate string `json:"aggregate,omitempty" yaml:"aggregate,omitempty"`
	// ScanK is how many candidates per query the pool scan keeps; global
	// and threshold choose among them. Default: the largest K of the base
	// and its variants, at least 2×K when a variant is global or threshold.
	ScanK int `json:"scan_k,omitempty" yaml:"scan_k,omitempty"`
	// Dedupe drops a selected image whose target features are within this
	// relative squared distance of a better-ranked selected image
	// (duplicates under other keys). Default 1.5e-4; negative turns it off.
	Dedupe float64 `json:"dedupe,omitempty" yaml:"dedupe,omitempty"`
	// Leakage drops a selected image whose target features are within
	// this relative squared distance of a test or E_heldout image, so no
	// copy of an evaluation image is trained on. Default 1.5e-4; negative
	// turns it off.
	Leakage float64 `json:"leakage,omitempty" yaml:"leakage,omitempty"`
	// ErrorDomain, when the pool manifest has a domain column (ground truth a
	// real pool rarely has), is the domain counted as a correct pick in the
	// selection precision.
	ErrorDomain string `json:"error_domain,omitempty" yaml:"error_domain,omitempty"`
	// Variants are other selections to compare, by name; a zero field
	// takes the base selection's value. Each is compared: compare left
	// out lists them all, and a compare that leaves one out is refused.
	Variants map[string]SelectionVariant `json:"variants,omitempty" yaml:"variants,omitempty"`
}

// SelectionVariant overrides fields of the base Selection.
type SelectionVariant struct {
	Strategy  string  `json:"strategy,omitempty" yaml:"strategy,omitempty"`
	K         int     `json:"k,omitempty" yaml:"k,omitempty"`
	Budget    int     `json:"budget,omitempty" yaml:"budget,omitempty"`
	Threshold float64 `json:"threshold,omitempty" yaml:"threshold,omitempty"`
	Aggregate string  `json:"aggregate,omitempty" yaml:"aggregate,omitempty"`
	Dedupe    float64 `json:"dedupe,omitempty" yaml:"dedupe,omitempty"`
	Leakage   float64 `json:"leakage,omitempty" yaml:"leakage,omitempty"`
}

// MaxBatchSize bounds retrain.batch_size: a mini-batch's rows are held in
// memory together (at 2,048 features, 512 MiB).
const MaxBatchSize = 1 << 16

// Retrain is the recipe every compared method is retrained with.
type Retrain struct {
	// Lambda is the L2 strength of the softmax head (default 0.01).
	Lambda float64 `json:"lambda" yaml:"lambda"`
	// Iters bounds L-BFGS iterations in full_batch mode (default 300).
	Iters int `json:"iters" yaml:"iters"`
	// Mode is full_batch (default: L-BFGS, one pass over the rows per
	// objective evaluation) or mini_batch (Adam over seeded shuffles).
	Mode string `json:"mode,omitempty" yaml:"mode,omitempty"`
	// Epochs, BatchSize and LearningRate tune mini_batch (defaults 20,
	// 256, 0.01).
	Epochs       int     `json:"epochs,omitempty" yaml:"epochs,omitempty"`
	BatchSize    int     `json:"batch_size,omitempty" yaml:"batch_size,omitempty"`
	LearningRate float64 `json:"learning_rate,omitempty" yaml:"learning_rate,omitempty"`
	// ClassBalanced weights each class equally in the loss.
	ClassBalanced bool `json:"class_balanced,omitempty" yaml:"class_balanced,omitempty"`
	// DebugWeight is the weight of a debug-train row relative to a train
	// row (default 1: the plain union train ∪ debug-train, as in the
	// paper).
	DebugWeight float64 `json:"debug_weight,omitempty" yaml:"debug_weight,omitempty"`
	// MemoryMB bounds the feature rows a retraining holds in memory; a
	// larger training set is re-read from the feature files on every pass
	// (default 1024).
	MemoryMB int `json:"memory_mb,omitempty" yaml:"memory_mb,omitempty"`
	// Trainer, when set, replaces the built-in head by an external command.
	Trainer *Trainer `json:"trainer,omitempty" yaml:"trainer,omitempty"`
}

// Retraining modes.
const (
	FullBatch = "full_batch"
	MiniBatch = "mini_batch"
)

// Trainer is an external training command, run on the train task queue
// once per retrained method. Each argument may hold placeholders:
//
//	{storage}      the worker's bucket URL
//	{train}        key of the train manifest (CSV uri,label,domain)
//	{debug_train}  key of the method's debug-train manifest (same columns)
//	{model}        key where the command must write the ONNX model
//	{job}          key of a JSON file with the target model, classes,
//	               the retraining recipe and the seed
//	{work}         an empty local folder for the command's files
//	{run} {method} the pass's run id and the method's name
//
// A manifest's uri starting with "/" is a key in {storage}.
type Trainer struct {
	Command []string `json:"command" yaml:"command"`
	// Output is the produced model's graph output holding class scores
	// (default "probabilities").
	Output string `json:"output,omitempty" yaml:"output,omitempty"`
}

var variantName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// Variant is the selection for a dcd method: the base for "dcd", the base
// with a variant's overrides for "dcd:<name>". ok is false for an unknown
// variant or a method that is not dcd.
func (s Selection) Variant(method string) (Selection, bool) {
	if method == MethodDCD {
		v := s
		v.Variants = nil
		return v, true
	}
	name, ok := strings.CutPrefix(method, MethodDCD+":")
	if !ok {
		return s, false
	}
	o, ok := s.Variants[name]
	if !ok {
		return s, false
	}
	v := s
	v.Variants = nil
	if o.Strategy != "" {
		v.Strategy = o.Strategy
	}
	if o.K != 0 {
		v.K = o.K
	}
	if o.Budget != 0 {
		v.Budget = o.Budget
	}
	if o.Threshold != 0 {
		v.Threshold = o.Threshold
	}
	if o.Aggregate != "" {
		v.Aggregate = o.Aggregate
	}
	if o.Dedupe != 0 {
		v.Dedupe = o.Dedupe
	}
	if o.Leakage != 0 {
		v.Leakage = o.Leakage
	}
	return v, true
}

// IsDCD reports whether a method is dcd or one of its variants.
func IsDCD(method string) bool {
	return method == MethodDCD || strings.HasPrefix(method, MethodDCD+":")
}

// ReferenceDCD is the dcd method whose selection size the random baseline
// matches: dcd when compared, else the first variant.
func (c Config) ReferenceDCD() string {
	if slices.Contains(c.Compare, MethodDCD) {
		return MethodDCD
	}
	for _, m := range c.Compare {
		if IsDCD(m) {
			return m
		}
	}
	return ""
}

// ScanK is how many nearest pool images per query the pool scan keeps.
func (c Config) ScanK() int {
	k := max(c.Selection.ScanK, c.Selection.K)
	for _, m := range c.Compare {
		v, ok := c.Selection.Variant(m)
		if !ok {
			continue
		}
		k = max(k, v.K)
		if c.Selection.ScanK == 0 && v.Strategy != PerQuery {
			k = max(k, 2*v.K)
		}
	}
	return k
}

func (s Selection) withDefaults() Selection {
	if s.Strategy == "" {
		s.Strategy = PerQuery
	}
	if s.K == 0 {
		s.K = 10
	}
	if s.Aggregate == "" {
		s.Aggregate = AggMin
	}
	if s.Dedupe == 0 {
		s.Dedupe = DefaultDedupe
	}
	if s.Leakage == 0 {
		s.Leakage = DefaultLeakage
	}
	return s
}

func (r Retrain) withDefaults() Retrain {
	if r.Lambda == 0 {
		r.Lambda = 0.01
	}
	if r.Iters == 0 {
		r.Iters = 300
	}
	if r.Mode == "" {
		r.Mode = FullBatch
	}
	if r.Epochs == 0 {
		r.Epochs = 20
	}
	if r.BatchSize == 0 {
		r.BatchSize = 256
	}
	if r.LearningRate == 0 {
		r.LearningRate = 0.01
	}
	if r.DebugWeight == 0 {
		r.DebugWeight = 1
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = 1024
	}
	if r.Trainer != nil {
		t := *r.Trainer
		if t.Output == "" {
			t.Output = "probabilities"
		}
		r.Trainer = &t
	}
	return r
}

// validateCompare checks compare, selection and retrain.
func (c Config) validateCompare() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if len(c.Compare) == 0 {
		return bad("compare", "lists no method (leave it out for the default %q)", DefaultCompare)
	}
	seen := map[string]bool{}
	for i, m := range c.Compare {
		field := fmt.Sprintf("compare[%d]", i)
		if seen[m] {
			return bad(field, "%q is listed twice", m)
		}
		seen[m] = true
		switch {
		case m == MethodNone, m == MethodTrainOnly, m == MethodRandom, m == MethodAllPool, m == MethodDCD:
		case IsDCD(m):
			if _, ok := c.Selection.Variant(m); !ok {
				return bad(field, "%q names no variant of selection.variants (have %q)", m, slices.Sorted(maps.Keys(c.Selection.Variants)))
			}
		default:
			return bad(field, "unknown method %q (want none, train_only, random, all_pool, dcd or dcd:<variant>)", m)
		}
	}
	if seen[MethodRandom] && c.ReferenceDCD() == "" {
		return bad("compare", "random draws as many pool images as dcd selects, so it needs dcd or a dcd variant in the list")
	}
	if err := c.Selection.validate("selection"); err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(c.Selection.Variants)) {
		if !variantName.MatchString(name) {
			return bad("selection.variants", "variant name %q may hold only lower-case letters, digits, '-' and '_'", name)
		}
		v, _ := c.Selection.Variant(MethodDCD + ":" + name)
		if err := v.validate("selection.variants." + name); err != nil {
			return err
		}
	}
	if c.Selection.ScanK < 0 || c.Selection.ScanK > 10000 {
		return bad("selection.scan_k", "must be in [0, 10000], got %d", c.Selection.ScanK)
	}
	r := c.Retrain
	if !(r.Lambda >= 0) || math.IsInf(r.Lambda, 1) {
		return bad("retrain.lambda", "must be a number >= 0, got %g", r.Lambda)
	}
	if r.Iters < 1 {
		return bad("retrain.iters", "must be >= 1, got %d", r.Iters)
	}
	if r.Mode != FullBatch && r.Mode != MiniBatch {
		return bad("retrain.mode", "%q is not full_batch or mini_batch", r.Mode)
	}
	if r.Epochs < 1 {
		return bad("retrain.epochs", "must be >= 1, got %d", r.Epochs)
	}
	if r.BatchSize < 1 || r.BatchSize > MaxBatchSize {
		// A batch's rows are held at once: 10^7 of 2,048 features is 80 GB.
		return bad("retrain.batch_size", "must be between 1 and %d, got %d", MaxBatchSize, r.BatchSize)
	}
	if !(r.LearningRate > 0) || math.IsInf(r.LearningRate, 1) {
		return bad("retrain.learning_rate", "must be a number > 0, got %g", r.LearningRate)
	}
	if w := float32(r.DebugWeight); !(r.DebugWeight >= 0) || math.IsInf(float64(w), 1) || w == 0 && r.DebugWeight != 0 {
		// Rows are weighed in float32: past its range a weight is +Inf
		// (retraining fails) or 0 (the rows are dropped).
		return bad("retrain.debug_weight", "must be 0 or a number in [%g, %g], got %g", math.SmallestNonzeroFloat32, math.MaxFloat32, r.DebugWeight)
	}
	if r.MemoryMB < 0 {
		return bad("retrain.memory_mb", "must be >= 0, got %d", r.MemoryMB)
	}
	if t := r.Trainer; t != nil {
		if len(t.Command) == 0 || t.Command[0] == "" {
			return bad("retrain.trainer.command", "must name the program to run")
		}
		if !slices.ContainsFunc(t.Command, modelPassed.MatchString) {
			// ${model} is a shell's own variable, left to it.
			return bad("retrain.trainer.command", "must pass {model}, where the trained ONNX model is to be written (${model} is the shell's, not replaced)")
		}
		for i, arg := range t.Command {
			for _, m := range placeholder.FindAllStringSubmatchIndex(arg, -1) {
				// A placeholder is an argument, or a flag's value after
				// "=": braces inside a script (awk's {print}, Python's
				// format strings) are the script's.
				name, alone := arg[m[2]:m[3]], m[1] == len(arg) && (m[0] == 0 || arg[m[0]-1] == '=')
				if alone && !slices.Contains(TrainerPlaceholders, name) {
					return bad(fmt.Sprintf("retrain.trainer.command[%d]", i), "%q: {%s} is no placeholder (want one of {%s})",
						arg, name, strings.Join(TrainerPlaceholders, "}, {"))
				}
			}
		}
	}
	return nil
}

// TrainerPlaceholders are the names a trainer's command may hold in
// braces, {model}, each replaced by its value when the command runs. An
// argument that is a name in braces not among them ({debug}, or
// -debug={debug}) is taken for a misspelling.
var TrainerPlaceholders = []string{"storage", "train", "debug_train", "model", "job", "work", "run", "method"}

var placeholder = regexp.MustCompile(`\{([a-z_]+)\}`)

// modelPassed matches an argument that passes {model}: not a shell's
// ${model}, which the trainer's substitution leaves alone.
var modelPassed = regexp.MustCompile(`(^|[^$])\{model\}`)

func (s Selection) validate(field string) error {
	bad := func(f, format string, args ...any) error {
		return &FieldError{Field: field + "." + f, Msg: fmt.Sprintf(format, args...)}
	}
	// YAML can write .inf and .nan; JSON, which carries the config to the
	// workflow, cannot.
	for _, f := range []struct {
		name string
		v    float64
	}{{"threshold", s.Threshold}, {"dedupe", s.Dedupe}, {"leakage", s.Leakage}} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			return bad(f.name, "must be a finite number, got %g", f.v)
		}
	}
	switch s.Strategy {
	case PerQuery:
	case Global:
		if s.Budget < 1 {
			return bad("budget", "the global strategy needs a budget >= 1, got %d", s.Budget)
		}
	case Threshold:
		if !(s.Threshold > 0) {
			return bad("threshold", "the threshold strategy needs a threshold > 0, got %g", s.Threshold)
		}
	default:
		return bad("strategy", "%q is not per_query, global or threshold", s.Strategy)
	}
	if s.K < 1 || s.K > 10000 {
		return bad("k", "must be in [1, 10000], got %d", s.K)
	}
	if s.Aggregate != AggMin && s.Aggregate != AggMean {
		return bad("aggregate", "%q is not min or mean", s.Aggregate)
	}
	return nil
}

// CheckUnused refuses what a config sets that its pass would not use: a
// variant of selection.variants that compare leaves out (most likely one
// forgotten in compare, and its pass would end without the row it was
// for), or similarity.logits (only the similarity model's features are
// read; logits set there are most likely meant for the target). The
// starter checks it of the user's file; a pass does not, since a
// schedule's config stored by a starter before these checks (compare
// listed the variants by default) runs as it did.
func (c Config) CheckUnused() error {
	for _, name := range slices.Sorted(maps.Keys(c.Selection.Variants)) {
		if m := MethodDCD + ":" + name; !slices.Contains(c.Compare, m) {
			return &FieldError{Field: "selection.variants." + name, Msg: fmt.Sprintf("is defined but compare leaves it out: add %q to compare, or remove the variant", m)}
		}
	}
	if c.Similarity != nil && c.Similarity.Logits != "" {
		return &FieldError{Field: "similarity.logits", Msg: fmt.Sprintf("%q is not used: only the similarity model's features are read (the class scores are the target's, target.logits); remove it", c.Similarity.Logits)}
	}
	return nil
}
