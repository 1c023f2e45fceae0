// Package schemas holds the shapes that cross process boundaries: the pass
// configuration a user writes, and the Arrow schemas of the files a pass
// leaves in blob storage.
//
// Config is what the starter reads from YAML or JSON and what a DebugPass
// workflow receives. It holds storage keys, names and numbers only, never
// credentials: those come from the worker's environment.
package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/text/unicode/norm"
	"gopkg.in/yaml.v3"

	"dcd/internal/preprocess"
)

// Config is one debug pass. Every key (model, prefix, manifest) is relative to
// the storage bucket the workers were started with.
type Config struct {
	// Name labels the pass in the UI and in run IDs; letters, digits, '-', '_'.
	Name string `json:"name" yaml:"name"`
	// Seed makes every random choice of the pass (random baseline, shard
	// order ties) reproducible.
	Seed uint64 `json:"seed" yaml:"seed"`
	// Classes lists the class labels in the order of the target model's
	// logits. Dataset labels must be among them.
	Classes []string `json:"classes" yaml:"classes"`
	// ClassesFile is a text file with one class label per line, in logit
	// order: a key in the bucket or an absolute URL. When set it wins: the
	// pass reads its classes from the file and ignores Classes.
	ClassesFile string `json:"classes_file,omitempty" yaml:"classes_file,omitempty"`
	// Target is the classifier being debugged.
	Target Model `json:"target" yaml:"target"`
	// Similarity is the model whose features drive the nearest-neighbour
	// search. Empty: the target's own features.
	Similarity *Model    `json:"similarity,omitempty" yaml:"similarity,omitempty"`
	Data       Data      `json:"data" yaml:"data"`
	Selection  Selection `json:"selection" yaml:"selection"`
	Retrain    Retrain   `json:"retrain" yaml:"retrain"`
	Shards     Shards    `json:"shards" yaml:"shards"`
	Timeouts   Timeouts  `json:"timeouts" yaml:"timeouts"`

	// Compare lists the methods evaluated side by side (see compare.go);
	// default DefaultCompare, then "dcd:<name>" for each variant of
	// selection.variants by name.
	Compare []string `json:"compare,omitempty" yaml:"compare,omitempty"`
}

// Model is an ONNX model and how to feed it.
type Model struct {
	// Path is the .onnx file's key in storage.
	Path string `json:"path" yaml:"path"`
	// Input is the graph input fed with images. Empty: the model's only input.
	Input string `json:"input,omitempty" yaml:"input,omitempty"`
	// Features is the tensor holding the penultimate-layer features: a graph
	// output, or any node's output (the pass then adds it to the graph's
	// outputs, flattened to [N, values per image]).
	Features string `json:"features" yaml:"features"`
	// Logits is the tensor holding class scores (target model only), a graph
	// output or any node's output, as Features.
	Logits string `json:"logits,omitempty" yaml:"logits,omitempty"`
	// Preprocess says how images become the model's input. An empty layout
	// and zero channels, height or width are read from the model's input
	// shape when the pass checks the model ([N,3,224,224] is NCHW 3×224×224,
	// [N,224,224,3] NHWC).
	Preprocess preprocess.Spec `json:"preprocess" yaml:"preprocess"`
	// EP is the ONNX Runtime execution provider that embeds with this
	// model: "cpu" or "cuda". Empty: the worker's -ep.
	EP string `json:"ep,omitempty" yaml:"ep,omitempty"`
	// StoredAs is the value type of the model's feature files: "float32"
	// (the default) or "float16", which halves what the feature cache
	// holds and what a recurring pass reads back, for three significant
	// digits per value.
	StoredAs string `json:"stored_as,omitempty" yaml:"stored_as,omitempty"`
}

// The value types a feature file may store (Model.StoredAs).
const (
	Float32 = "float32"
	Float16 = "float16"
)

// withDefaults fills the preprocessing defaults except the layout, which
// stays empty until the pass reads it from the model.
func (m Model) withDefaults() Model {
	fromModel := strings.TrimSpace(m.Preprocess.Layout) == ""
	m.Preprocess = m.Preprocess.WithDefaults()
	if fromModel {
		m.Preprocess.Layout = ""
	}
	if m.StoredAs = strings.ToLower(strings.TrimSpace(m.StoredAs)); m.StoredAs == "" {
		m.StoredAs = Float32
	}
	return m
}

// Data names the five datasets of a pass. Each is an ImageFolder prefix
// (prefix/<label>/<file>), a CSV or Parquet manifest (uri,label[,domain])
// or WebDataset .tar shards.
type Data struct {
	Train        Dataset `json:"train" yaml:"train"`
	Test         Dataset `json:"test" yaml:"test"`
	ErrorSample  Dataset `json:"error_sample" yaml:"error_sample"`
	ErrorHeldout Dataset `json:"error_heldout" yaml:"error_heldout"`
	Pool         Dataset `json:"pool" yaml:"pool"`
}

// Dataset is where one set of labeled images lives: exactly one of Prefix,
// Manifest and WebDataset. Each is a key in the bucket or an absolute URL
// (s3://bucket/path?region=…, file:///dir/…).
type Dataset struct {
	// Prefix holds images as <prefix>/<label>/<file>.
	Prefix string `json:"prefix,omitempty" yaml:"prefix,omitempty"`
	// Manifest is a CSV file, or a Parquet file named *.parquet, with
	// columns uri and label (and optionally domain). A uri is relative to
	// the manifest's folder, /key in the bucket, or an absolute URL.
	Manifest string `json:"manifest,omitempty" yaml:"manifest,omitempty"`
	// WebDataset is a prefix of .tar shards (or one .tar) in the
	// WebDataset layout: each sample's image member beside a .cls member
	// holding its label (and optionally a .domain member). A pool of small
	// images reads far faster packed than one object per image.
	WebDataset string `json:"webdataset,omitempty" yaml:"webdataset,omitempty"`
}

// Shards sizes the fan-out over the pool.
type Shards struct {
	// Size is the mean number of images per shard.
	Size int `json:"size" yaml:"size"`
	// Window is how many shards are embedded at once per chain. Cached
	// shards are looked up (and the pool's searched) in batches that
	// any worker polling the cpu queue takes, as many as its slots allow.
	Window int `json:"window" yaml:"window"`
	// BatchSize is the inference batch.
	BatchSize int `json:"batch_size" yaml:"batch_size"`
	// Chains is how many child chains of up to 1,000 shards run at once
	// per dataset. Together with Window it bounds a pass's concurrency:
	// Chains×Window shards embedded at once, and Chains×25 batches of
	// 16 cached shards looked up at once (a chain run's 400), whatever
	// the workers could take: raise them with the fleet.
	Chains int `json:"chains,omitempty" yaml:"chains,omitempty"`
}

// Timeouts bound activities; a dead worker is noticed after Heartbeat.
// RetryFor is how long a failing step is tried again before it fails the
// pass (a store down for minutes, a fleet's workers replaced): the waits
// between its tries, 1 s doubling to a minute, not the tries' own time.
type Timeouts struct {
	Heartbeat Duration `json:"heartbeat" yaml:"heartbeat"`
	Activity  Duration `json:"activity" yaml:"activity"`
	RetryFor  Duration `json:"retry_for,omitempty" yaml:"retry_for,omitempty"`
}

// Duration is a time.Duration written as "10s" in YAML and JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("timeouts: a duration is a string like \"30s\" or \"2h\", got %s", b)
	}
	return d.parse(s)
}

// UnmarshalYAML says where the duration is: yaml.v3 passes an
// unmarshaler's error on without the line, and a timeout's name is not
// known here.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if err := d.parse(n.Value); err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	return nil
}

func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("timeouts: duration %q: want a number with a unit, like \"30s\" or \"2h\"", s)
	}
	*d = Duration(v)
	return nil
}

// unknownYAMLField is yaml.v3's error for a key no field takes.
var unknownYAMLField = regexp.MustCompile(`field (\S+) not found in type \S+`)

// LoadConfig reads a YAML or JSON file and fills defaults: JSON when its
// name ends in .json, YAML when in .yaml or .yml, else as its text begins
// (a config piped in as /dev/fd/63 has no extension). Unknown fields are
// errors, so a misspelt key is not silently ignored, and so are a key
// given twice in one mapping or object, a JSON key that names a field only
// in another case (encoding/json would take both, the last one winning),
// and anything after the config (a second YAML document, a second JSON
// object).
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	var decode func(any) error
	var more func() bool // whether anything follows the config
	ext := strings.ToLower(filepath.Ext(path))
	if ext == ".json" || ext != ".yaml" && ext != ".yml" && strings.HasPrefix(strings.TrimSpace(string(b)), "{") {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		decode = func(v any) error {
			if err := dec.Decode(v); err != nil {
				return err
			}
			return checkJSONKeys(b, reflect.TypeOf(v).Elem())
		}
		more = func() bool {
			var v any
			return dec.Decode(&v) != io.EOF
		}
	} else {
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		decode = func(v any) error {
			if err := dec.Decode(v); err != nil {
				return err
			}
			var n yaml.Node // the first document, as decoded
			if err := yaml.Unmarshal(b, &n); err != nil {
				return err
			}
			return checkYAMLWholeNumbers(&n, "", reflect.TypeOf(v))
		}
		more = func() bool { // an empty document ("---" at the end) is nothing
			for {
				var n yaml.Node
				switch err := dec.Decode(&n); {
				case err == io.EOF:
					return false
				case err != nil || len(n.Content) > 0 && n.Content[0].Tag != "!!null":
					return true
				}
			}
		}
	}
	switch err = decode(&c); {
	case err == io.EOF:
		return c, fmt.Errorf("config %s: the file holds no config", path)
	case err != nil:
		// yaml.v3 names Go's types ("field sed not found in type
		// schemas.Config"), which say nothing to a config's writer.
		msg := unknownYAMLField.ReplaceAllString(err.Error(), `unknown field "$1" (misspelled, or at the wrong level?)`)
		return c, fmt.Errorf("config %s: %s", path, msg)
	}
	if more() {
		return c, fmt.Errorf("config %s: more than one config in the file (a second YAML document or JSON value after the first)", path)
	}
	return c.WithDefaults(), nil
}

// ValidateAsStarted is Validate less the bounds added to it on the day
// passes began to record their config and verdict in their histories
// (workflows' config-once) and since: a pass started before then checks
// its config again on every replay, and one that passed must pass still,
// or its replay stops short of its history. Values past those bounds are
// taken at the bound before Validate. Add each bound added to Validate
// here too.
func (c Config) ValidateAsStarted() error {
	c.Retrain.BatchSize = min(c.Retrain.BatchSize, MaxBatchSize)
	c.Shards.BatchSize = min(c.Shards.BatchSize, maxInferenceBatch)
	c.Shards.Size = min(c.Shards.Size, maxShardSize)
	if w := c.Retrain.DebugWeight; w > 0 && !math.IsInf(w, 1) {
		c.Retrain.DebugWeight = min(max(w, math.SmallestNonzeroFloat32), math.MaxFloat32)
	}
	models := []*Model{&c.Target}
	if c.Similarity != nil {
		sim := *c.Similarity // a copy: the caller's config stays as it is
		c.Similarity = &sim
		models = append(models, &sim)
	}
	for _, m := range models {
		if p := &m.Preprocess; p.Width > 0 && p.Height*p.Width > preprocess.MaxArea {
			p.Height = max(1, preprocess.MaxArea/p.Width)
		}
	}
	// Not checkCredentials, which came after: a pass it would refuse was
	// started, and replaying it must not fail where it ran on.
	return c.validateFields()
}

// maxInferenceBatch bounds shards.batch_size: an embedding keeps three
// batches of model input (a 224×224 RGB batch of 4,096 is 2.4 GB), for
// each shard a worker embeds at once. maxShardSize bounds shards.size: a
// shard's manifest and features are read whole.
const (
	maxInferenceBatch = 4096
	maxShardSize      = 1_000_000
)

// WithDefaults fills every zero field that has a sensible default.
func (c Config) WithDefaults() Config {
	// Classes as the datasets' labels are read (dataset.Label): a class
	// typed "café" matches a folder macOS named with a combining accent.
	if len(c.Classes) > 0 {
		classes := make([]string, len(c.Classes))
		for i, cl := range c.Classes {
			classes[i] = norm.NFC.String(strings.TrimSpace(cl))
		}
		c.Classes = classes
	}
	c.Target = c.Target.withDefaults()
	if c.Similarity != nil {
		s := c.Similarity.withDefaults()
		c.Similarity = &s
	}
	c.Selection = c.Selection.withDefaults()
	c.Retrain = c.Retrain.withDefaults()
	if len(c.Compare) == 0 {
		c.Compare = slices.Clone(DefaultCompare)
		for _, name := range slices.Sorted(maps.Keys(c.Selection.Variants)) {
			c.Compare = append(c.Compare, MethodDCD+":"+name)
		}
	}
	if c.Shards.Size == 0 {
		c.Shards.Size = 2000
	}
	if c.Shards.Window == 0 {
		c.Shards.Window = 4
	}
	if c.Shards.BatchSize == 0 {
		c.Shards.BatchSize = 64
	}
	if c.Shards.Chains == 0 {
		c.Shards.Chains = 4
	}
	if c.Timeouts.Heartbeat == 0 {
		c.Timeouts.Heartbeat = Duration(30 * time.Second)
	}
	if c.Timeouts.Activity == 0 {
		c.Timeouts.Activity = Duration(2 * time.Hour)
	}
	if c.Timeouts.RetryFor == 0 {
		c.Timeouts.RetryFor = Duration(20 * time.Minute)
	}
	return c
}

// SimilarityModel is the model used for nearest neighbours: the configured
// one, or the target's features.
func (c Config) SimilarityModel() Model {
	if c.Similarity != nil {
		return *c.Similarity
	}
	m := c.Target
	m.Logits = ""
	return m
}

// FieldError is a configuration mistake: the field's path, as written in
// the config file, and what was expected.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return "config: " + e.Field + ": " + e.Msg }

// Validate checks c without touching storage. It returns a *FieldError for
// the first problem, naming the field as the user wrote it. A credential in
// a URL is one (checkCredentials).
func (c Config) Validate() error {
	if err := c.validateFields(); err != nil {
		return err
	}
	return c.checkCredentials()
}

func (c Config) validateFields() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if c.Name == "" {
		return bad("name", "must be set")
	}
	for _, r := range c.Name {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return bad("name", "%q may hold only letters, digits, '-' and '_'", c.Name)
		}
	}
	if c.ClassesFile == "" && len(c.Classes) < 2 {
		return bad("classes", "needs at least 2 class labels (or set classes_file), got %d", len(c.Classes))
	}
	seen := map[string]bool{}
	for i, cl := range c.Classes {
		if c.ClassesFile != "" {
			break // the file's classes are the pass's; these are ignored
		}
		if cl == "" || seen[cl] {
			return bad(fmt.Sprintf("classes[%d]", i), "%q is empty or repeated", cl)
		}
		seen[cl] = true
	}
	if err := c.Target.validate("target", true); err != nil {
		return err
	}
	if c.Similarity != nil {
		if err := c.Similarity.validate("similarity", false); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		field string
		ds    Dataset
	}{
		{"data.train", c.Data.Train},
		{"data.test", c.Data.Test},
		{"data.error_sample", c.Data.ErrorSample},
		{"data.error_heldout", c.Data.ErrorHeldout},
		{"data.pool", c.Data.Pool},
	} {
		set := 0
		for _, v := range []string{d.ds.Prefix, d.ds.Manifest, d.ds.WebDataset} {
			if v != "" {
				set++
			}
		}
		if set != 1 {
			return bad(d.field, "set exactly one of prefix, manifest and webdataset")
		}
	}
	if err := c.validateCompare(); err != nil {
		return err
	}
	if c.Shards.Size < 1 || c.Shards.Size > maxShardSize {
		return bad("shards.size", "must be in [1, %d], got %d", maxShardSize, c.Shards.Size)
	}
	if c.Shards.Window < 1 || c.Shards.Window > 1000 {
		return bad("shards.window", "must be in [1, 1000], got %d", c.Shards.Window)
	}
	if c.Shards.BatchSize < 1 || c.Shards.BatchSize > maxInferenceBatch {
		return bad("shards.batch_size", "must be in [1, %d], got %d", maxInferenceBatch, c.Shards.BatchSize)
	}
	if c.Shards.Chains < 1 || c.Shards.Chains > 1000 {
		return bad("shards.chains", "must be in [1, 1000], got %d", c.Shards.Chains)
	}
	if c.Timeouts.Heartbeat < Duration(time.Second) {
		return bad("timeouts.heartbeat", "must be at least 1s, got %s", time.Duration(c.Timeouts.Heartbeat))
	}
	if c.Timeouts.Activity < c.Timeouts.Heartbeat {
		// Temporal refuses to schedule an activity with a negative
		// timeout, and the pass would hang on a failing workflow task.
		return bad("timeouts.activity", "must be at least timeouts.heartbeat (%s), got %s", time.Duration(c.Timeouts.Heartbeat), time.Duration(c.Timeouts.Activity))
	}
	if c.Timeouts.RetryFor < 0 || c.Timeouts.RetryFor > Duration(7*24*time.Hour) {
		return bad("timeouts.retry_for", "must be in [0, 168h] (0: the default, 20m), got %s", time.Duration(c.Timeouts.RetryFor))
	}
	return nil
}

func (m Model) validate(field string, target bool) error {
	if m.Path == "" {
		return &FieldError{field + ".path", "must name the .onnx file's key in storage"}
	}
	if m.Features == "" {
		return &FieldError{field + ".features", "must name the tensor holding the features"}
	}
	if m.EP != "" && m.EP != "cpu" && m.EP != "cuda" {
		return &FieldError{field + ".ep", fmt.Sprintf("must be cpu or cuda (or empty for the worker's -ep), got %q", m.EP)}
	}
	if m.StoredAs != "" && m.StoredAs != Float32 && m.StoredAs != Float16 {
		return &FieldError{field + ".stored_as", fmt.Sprintf("must be float32 or float16, got %q", m.StoredAs)}
	}
	if target && m.Logits == "" {
		return &FieldError{field + ".logits", "must name the tensor holding the class scores"}
	}
	// Zero sizes are read from the model when the pass checks it, and the
	// filled spec is validated again then; stand-ins let the rest be
	// checked now.
	p := m.Preprocess
	if p.Channels == 0 {
		p.Channels = 3
		if max(len(p.Mean), len(p.Std)) == 1 {
			p.Channels = 1
		}
	}
	if p.Height == 0 {
		p.Height = 1
	}
	if p.Width == 0 {
		p.Width = 1
	}
	if err := p.Validate(); err != nil {
		return &FieldError{field + ".preprocess", err.Error()}
	}
	return nil
}
