package schemas

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"dcd/internal/preprocess"
)

func compareConfig() Config {
	return Config{
		Name: "c", Classes: []string{"a", "b"},
		Target: Model{Path: "m.onnx", Features: "f", Logits: "l", Preprocess: preprocess.Spec{Channels: 1, Height: 28, Width: 28}},
		Data: Data{Train: Dataset{Prefix: "t/"}, Test: Dataset{Prefix: "s/"}, ErrorSample: Dataset{Prefix: "e/"},
			ErrorHeldout: Dataset{Prefix: "h/"}, Pool: Dataset{Manifest: "p.csv"}},
	}
}

// Without compare, a pass runs the documented default methods, each
// retraining with the documented recipe.
func TestCompareDefaults(t *testing.T) {
	c := compareConfig().WithDefaults()
	if !slices.Equal(c.Compare, DefaultCompare) || c.ReferenceDCD() != MethodDCD {
		t.Errorf("compare %q, reference %q", c.Compare, c.ReferenceDCD())
	}
	s, r := c.Selection, c.Retrain
	if s.Strategy != PerQuery || s.K != 10 || s.Aggregate != AggMin || s.Dedupe != DefaultDedupe || s.Leakage != DefaultLeakage {
		t.Errorf("selection defaults %+v", s)
	}
	if r.Mode != FullBatch || r.DebugWeight != 1 || r.Lambda != 0.01 || r.Iters != 300 || r.MemoryMB != 1024 {
		t.Errorf("retrain defaults %+v", r)
	}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
	if c.ScanK() != 10 {
		t.Errorf("scan k %d, want 10", c.ScanK())
	}
}

// A variant overrides the fields it sets; the scan keeps enough
// candidates for the largest k and for the global strategies.
func TestSelectionVariants(t *testing.T) {
	c := compareConfig()
	c.Selection.Variants = map[string]SelectionVariant{
		"wide":   {K: 25},
		"budget": {Strategy: Global, Budget: 300, Aggregate: AggMean},
	}
	c.Compare = []string{MethodNone, "dcd:budget", "dcd:wide", MethodRandom}
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	v, ok := c.Selection.Variant("dcd:budget")
	if !ok || v.Strategy != Global || v.Budget != 300 || v.Aggregate != AggMean || v.K != 10 || v.Variants != nil {
		t.Errorf("dcd:budget = %+v, %v", v, ok)
	}
	if _, ok := c.Selection.Variant("dcd:nope"); ok {
		t.Error("an unknown variant resolved")
	}
	if c.ReferenceDCD() != "dcd:budget" {
		t.Errorf("reference %q, want the first dcd variant", c.ReferenceDCD())
	}
	if c.ScanK() != 25 {
		t.Errorf("scan k %d, want 25 (the wide variant's k)", c.ScanK())
	}
	c.Selection.ScanK = 100
	if c.ScanK() != 100 {
		t.Errorf("scan k %d, want the configured 100", c.ScanK())
	}
}

// A variant is compared: compare left out lists the default methods and
// then every variant by name; a compare that leaves one out is refused
// naming it and the method to add, except when a pass started before
// that check replays.
func TestVariantsCompared(t *testing.T) {
	c := compareConfig()
	c.Selection.Variants = map[string]SelectionVariant{"wide": {K: 25}, "budget": {Strategy: Global, Budget: 300}}
	d := c.WithDefaults()
	if want := append(slices.Clone(DefaultCompare), "dcd:budget", "dcd:wide"); !slices.Equal(d.Compare, want) {
		t.Errorf("default compare %q, want %q", d.Compare, want)
	}
	if err := cmp.Or(d.Validate(), d.CheckUnused()); err != nil {
		t.Error(err)
	}
	if d.ReferenceDCD() != MethodDCD || d.ScanK() != 25 {
		t.Errorf("reference %q, scan k %d", d.ReferenceDCD(), d.ScanK())
	}
	c.Compare = []string{MethodNone, MethodDCD, "dcd:budget"}
	c = c.WithDefaults()
	err := c.CheckUnused()
	fe, ok := err.(*FieldError)
	if !ok || fe.Field != "selection.variants.wide" || !strings.Contains(fe.Msg, `add "dcd:wide" to compare`) || !strings.Contains(fe.Msg, "remove the variant") {
		t.Errorf("wide left out of compare: %v", err)
	}
	// A pass does not refuse it: a schedule's config stored before
	// compare listed the variants by default lists none.
	if err := c.Validate(); err != nil {
		t.Errorf("a pass's check: %v", err)
	}
	c.Selection.Variants["wide"] = SelectionVariant{Strategy: Global}
	if err := c.Validate(); err == nil {
		t.Error("an uncompared variant without a budget, refused before too, passed")
	}
}

// A similarity model's logits are read nowhere: set, they are refused by
// the starter (most likely meant for the target), not by a pass.
func TestSimilarityLogitsUnused(t *testing.T) {
	c := compareConfig()
	c.Similarity = &Model{Path: "sim.onnx", Features: "embedding", Logits: "logits"}
	c = c.WithDefaults()
	err := c.CheckUnused()
	if fe, ok := err.(*FieldError); !ok || fe.Field != "similarity.logits" || !strings.Contains(fe.Msg, "remove it") {
		t.Errorf("similarity.logits set: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("a pass's check: %v", err)
	}
	c.Similarity.Logits = ""
	if err := c.CheckUnused(); err != nil {
		t.Errorf("similarity without logits: %v", err)
	}
}

// Bad compare, selection and retrain fields fail validation naming them.
func TestCompareValidation(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"compare[1]", func(c *Config) { c.Compare = []string{"none", "best"} }},
		{"compare[1]", func(c *Config) { c.Compare = []string{"dcd", "dcd"} }},
		{"compare[0]", func(c *Config) { c.Compare = []string{"dcd:missing"} }},
		{"compare", func(c *Config) { c.Compare = []string{"none", "random"} }},
		{"selection.strategy", func(c *Config) { c.Selection.Strategy = "closest" }},
		{"selection.budget", func(c *Config) { c.Selection.Strategy = Global }},
		{"selection.threshold", func(c *Config) { c.Selection.Strategy = Threshold }},
		{"selection.aggregate", func(c *Config) { c.Selection.Aggregate = "max" }},
		{"selection.k", func(c *Config) { c.Selection.K = -3 }},
		{"selection.variants.x.budget", func(c *Config) {
			c.Selection.Variants = map[string]SelectionVariant{"x": {Strategy: Global}}
			c.Compare = []string{"dcd:x"}
		}},
		{"selection.variants", func(c *Config) { c.Selection.Variants = map[string]SelectionVariant{"Bad Name": {}} }},
		{"retrain.mode", func(c *Config) { c.Retrain.Mode = "sgd" }},
		{"retrain.debug_weight", func(c *Config) { c.Retrain.DebugWeight = -1 }},
		{"retrain.debug_weight", func(c *Config) { c.Retrain.DebugWeight = math.Inf(1) }},
		{"retrain.debug_weight", func(c *Config) { c.Retrain.DebugWeight = 1e39 }},
		{"retrain.debug_weight", func(c *Config) { c.Retrain.DebugWeight = 1e-46 }},
		{"retrain.learning_rate", func(c *Config) { c.Retrain.LearningRate = math.Inf(1) }},
		{"retrain.lambda", func(c *Config) { c.Retrain.Lambda = math.NaN() }},
		{"retrain.batch_size", func(c *Config) { c.Retrain.BatchSize = 10_000_000 }},
		{"shards.batch_size", func(c *Config) { c.Shards.BatchSize = 6400 }},
		{"shards.size", func(c *Config) { c.Shards.Size = 50_000_000 }},
		{"timeouts.activity", func(c *Config) { c.Timeouts.Activity = Duration(-time.Hour) }},
		{"timeouts.retry_for", func(c *Config) { c.Timeouts.RetryFor = Duration(-time.Minute) }},
		{"retrain.trainer.command", func(c *Config) { c.Retrain.Trainer = &Trainer{Command: []string{"train.sh"}} }},
		{"retrain.trainer.command", func(c *Config) { // the shell's ${model}, not replaced
			c.Retrain.Trainer = &Trainer{Command: []string{"bash", "-c", "cp m.onnx ${model}"}}
		}},
		{"retrain.trainer.command[2]", func(c *Config) {
			c.Retrain.Trainer = &Trainer{Command: []string{"train.sh", "{model}", "-debug={debug}"}}
		}},
		{"selection.threshold", func(c *Config) { c.Selection.Threshold = math.Inf(1) }},
		{"selection.dedupe", func(c *Config) { c.Selection.Dedupe = math.NaN() }},
		{"selection.variants.x.leakage", func(c *Config) {
			c.Selection.Variants = map[string]SelectionVariant{"x": {Leakage: math.Inf(-1)}}
			c.Compare = []string{"dcd:x"}
		}},
	} {
		c := compareConfig().WithDefaults()
		tc.edit(&c)
		err := c.Validate()
		fe, ok := err.(*FieldError)
		if !ok || fe.Field != tc.field {
			t.Errorf("want an error naming %s, got %v", tc.field, err)
		} else if strings.TrimSpace(fe.Msg) == "" {
			t.Errorf("%s: empty message", tc.field)
		}
	}
}

// A trainer's command may hold every placeholder, and braces a script
// of its own holds: a shell's ${var}, awk's {print}, Python's format
// strings, JSON.
func TestTrainerPlaceholdersAccepted(t *testing.T) {
	c := compareConfig().WithDefaults()
	cmd := []string{"bash", "-c", `python train.py --out "$1" --work ${work_dir} --opts '{"a": 1}' {} && awk '{print}' {train}`, "-",
		"python", "-c", "print('{x}'.format(x=1))", "${work}"}
	for _, p := range TrainerPlaceholders {
		cmd = append(cmd, "{"+p+"}")
	}
	c.Retrain.Trainer = &Trainer{Command: append(cmd, "{storage}{job}")}
	if err := c.Validate(); err != nil {
		t.Error(err)
	}
}

// A job file written by hand without a recipe's numbers trains as a
// pass's config would: debug_weight 0 is the default 1, not weightless
// debug rows.
func TestTrainJobDefaults(t *testing.T) {
	j := TrainJob{}.WithDefaults()
	if j.Retrain.DebugWeight != 1 || j.Retrain.Lambda != 0.01 || j.Output != "probabilities" {
		t.Errorf("defaults: debug_weight %v, lambda %v, output %q", j.Retrain.DebugWeight, j.Retrain.Lambda, j.Output)
	}
}

// A pass started before its config was recorded checks it again on every
// replay: the bounds added since do not refuse what passed then, and what
// failed then fails still.
func TestValidateAsStarted(t *testing.T) {
	c := compareConfig().WithDefaults()
	c.Shards.BatchSize, c.Shards.Size, c.Retrain.DebugWeight = 6400, 50_000_000, 1e39
	c.Retrain.Mode, c.Retrain.BatchSize = MiniBatch, 100_000
	c.Target.Preprocess.Height, c.Target.Preprocess.Width = 8192, 4096
	sim := c.Target
	sim.Logits = ""
	c.Similarity = &sim
	if c.Validate() == nil || c.ValidateAsStarted() != nil {
		t.Errorf("past the new bounds: Validate %v, ValidateAsStarted %v; want only the first to refuse", c.Validate(), c.ValidateAsStarted())
	}
	if c.Target.Preprocess.Height != 8192 || c.Similarity.Preprocess.Height != 8192 {
		t.Errorf("ValidateAsStarted changed the config it checked: %d, %d", c.Target.Preprocess.Height, c.Similarity.Preprocess.Height)
	}
	// A credential in a URL, refused since, was a pass that ran.
	c.Data.Pool = Dataset{Manifest: "https://h/pool.csv?sig=abc"}
	if c.Validate() == nil || c.ValidateAsStarted() != nil {
		t.Errorf("a presigned manifest: Validate %v, ValidateAsStarted %v; want only the first to refuse", c.Validate(), c.ValidateAsStarted())
	}
	c.Retrain.DebugWeight = 1e-46
	if err := c.ValidateAsStarted(); err != nil {
		t.Errorf("debug_weight 1e-46: %v", err)
	}
	c.Shards.BatchSize = 0
	if c.ValidateAsStarted() == nil {
		t.Error("batch_size 0, refused before the new bounds too, passed")
	}
}
