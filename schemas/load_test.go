package schemas

import (
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
