package schemas

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A config is read as its name says, or as its text begins when its name
// says nothing (process substitution's /dev/fd/63); an empty file, a
// second document and a malformed duration say what is wrong, and where.
func TestLoadConfigFormats(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, text := range map[string]string{
		"pass.yaml": "name: x\nseed: 7\n",
		"pass.json": `{"name": "x", "seed": 7}`,
		"pass.cfg":  "# a comment\nname: x\nseed: 7\n",
		"fd63":      "  {\"name\": \"x\", \"seed\": 7}\n",
		"end.yaml":  "---\nname: x\nseed: 7\n---\n",
		"end.yml":   "name: x\nseed: 7\n...\n---\n# the end\n",
	} {
		c, err := LoadConfig(write(name, text))
		if err != nil || c.Name != "x" || c.Seed != 7 {
			t.Errorf("%s: %+v, %v", name, c, err)
		}
	}
	for _, c := range []struct{ name, text, want string }{
		{"empty.yaml", "# nothing yet\n", "holds no config"},
		{"empty", "", "holds no config"},
		{"two.yaml", "name: x\n---\nname: y\n", "more than one config"},
		{"two.json", `{"name": "x"} {"seed": 2}`, "more than one config"},
		{"bad.yaml", "name: x\ntimeouts:\n  heartbeat: 30\n", `line 3: timeouts: duration "30": want a number with a unit`},
		{"bad.json", `{"timeouts": {"activity": 30}}`, `timeouts: a duration is a string like "30s"`},
	} {
		_, err := LoadConfig(write(c.name, c.text))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s: %v, want an error naming the file and %q", c.name, err, c.want)
		}
	}
}

// A JSON config refuses what encoding/json would take silently, as YAML
// does: a key given twice in one object, at any depth and in a map of
// variants (the last one would win), and a key that names a field only
// in another case. Each error names the key's path and the fix.
// A fraction given for a whole number is refused in YAML, as in JSON:
// yaml.v3 would cut k: 2.9 to 2 and k: 0.5 to 0, the default.
func TestLoadConfigYAMLWholeNumbers(t *testing.T) {
	dir := t.TempDir()
	for i, c := range []struct{ text, want string }{
		{"name: x\nselection:\n  k: 2.9\n", `line 3: selection.k: 2.9 is not a whole number`},
		{"selection: {k: 0.5}", `selection.k: 0.5 is not a whole number`},
		{"seed: 1.5", `seed: 1.5 is not a whole number`},
		{"selection:\n  variants:\n    wide: {budget: 10.25}\n", `line 3: selection.variants.wide.budget: 10.25 is not a whole number`},
		{"target:\n  preprocess: {height: 27.5}\n", `target.preprocess.height: 27.5 is not a whole number`},
		{"selection:\n  threshold: &t 2.5\n  k: *t\n", `selection.k: 2.5 is not a whole number`},
		{"selection: {<<: {k: 2.5}}", `selection.k: 2.5 is not a whole number`},
		{"selection:\n  <<: [{threshold: 0.5}, {budget: 7.5}]\n", `selection.budget: 7.5 is not a whole number`},
	} {
		p := filepath.Join(dir, fmt.Sprintf("%d.yaml", i))
		if err := os.WriteFile(p, []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%q: %v, want an error naming the file and %q", c.text, err, c.want)
		}
	}
	// Whole numbers however written, and fractions where they belong.
	p := filepath.Join(dir, "ok.yaml")
	os.WriteFile(p, []byte("selection: {k: 20.0, threshold: 0.5}\nseed: 1e3\n"), 0o644)
	c, err := LoadConfig(p)
	if err != nil || c.Selection.K != 20 || c.Seed != 1000 {
		t.Errorf("whole numbers written as floats: %+v, %v", c.Selection, err)
	}
}

func TestLoadConfigJSONKeys(t *testing.T) {
	dir := t.TempDir()
	for i, c := range []struct{ text, want string }{
		{`{"name": "x", "selection": {"k": 10, "k": 3}}`, `line 1: selection.k: the key is given twice`},
		{`{"name": "x", "selection": {"error_domain": "invert", "Error_Domain": "x"}}`, `selection.Error_Domain: keys are case-sensitive: write "error_domain"`},
		{"{\"name\": \"x\",\n \"target\": {\"PATH\": \"m.onnx\"}}", `line 2: target.PATH: keys are case-sensitive: write "path"`},
		{`{"name": "x", "name": "y"}`, `name: the key is given twice`},
		{`{"name": "x", "ſeed": 1}`, `ſeed: keys are case-sensitive: write "seed"`},
		{`{"target": {"preprocess": {"mean": [0.5], "Std": [0.5]}}}`, `target.preprocess.Std: keys are case-sensitive: write "std"`},
		{`{"selection": {"variants": {"wide": {"k": 25}, "wide": {"k": 30}}}}`, `selection.variants.wide: the key is given twice`},
		{`{"selection": {"variants": {"wide": {"k": 25, "K": 30}}}}`, `selection.variants.wide.K: keys are case-sensitive: write "k"`},
		{`{"retrain": {"trainer": {"command": ["a", "{model}"], "output": "p", "Output": "q"}}}`, `retrain.trainer.Output: keys are case-sensitive`},
		{`{"timeouts": {"heartbeat": "30s", "heartbeat": "1m"}}`, `timeouts.heartbeat: the key is given twice`},
		{`{"data": {"train": {"prefix": "t/"}, "Train": {"prefix": "u/"}}}`, `data.Train: keys are case-sensitive: write "train"`},
	} {
		p := filepath.Join(dir, fmt.Sprintf("%d.json", i))
		if err := os.WriteFile(p, []byte(c.text), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadConfig(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want an error naming the file and %q", c.text, err, c.want)
		}
	}
	// Variants' names are the user's: two differing in case are two, and
	// the variants of another case only then fail validation by name.
	// Unknown keys, numbers and a second value read as before.
	for text, want := range map[string]string{
		`{"name": "x", "selection": {"variants": {"wide": {"k": 25}, "Wide": {"k": 30}}}, "compare": ["dcd:wide", "dcd:Wide"]}`: "",
		`{"name": "x", "seed": 18446744073709551615, "classes": ["a", "a"]}`:                                                    "",
		`{"name": "x", "Unknown": 1}`: `unknown field "Unknown"`,
		`{"name": "x"} {"name": "x"}`: "more than one config",
		`{"name": "x", "seed": 1.5}`:  "cannot unmarshal number 1.5",
		`{"name": "x",`:               "unexpected EOF",
	} {
		p := filepath.Join(dir, "ok.json")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := LoadConfig(p)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", text, err)
		case want == "" && c.Seed != 0 && c.Seed != 1<<64-1:
			t.Errorf("%s: seed %d", text, c.Seed)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: %v, want %q", text, err, want)
		}
	}
}
