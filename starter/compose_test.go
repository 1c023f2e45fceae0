package main

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"dcd/internal/compose"
	"dcd/schemas"
)

// starterHelp is what `starter ARGS -h` prints.
func starterHelp(args ...string) string {
	var out, errOut bytes.Buffer
	realMain(context.Background(), append(slices.Clone(args), "-h"), &out, &errOut, false)
	return out.String() + errOut.String()
}

// Every starter service of docker-compose.yml runs a command that exists,
// with flags that command defines, sets only environment variables the
// starter reads (storage credentials among them: report reads the bucket),
// and points TEMPORAL_ADDRESS at the temporal service. A run
// command's config file, mounted from the repository, loads and validates.
func TestComposeStarter(t *testing.T) {
	f, err := compose.Load("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	// The environment every command reads, from the help texts.
	env := compose.EnvNamesInText(starterHelp())
	for _, c := range commands {
		if c.run != nil || strings.Contains(c.name, " ") {
			for k := range compose.EnvNamesInText(starterHelp(strings.Fields(c.name)...)) {
				env[k] = true
			}
		}
	}
	if !env["TEMPORAL_ADDRESS"] || !env["DCD_STORAGE"] {
		t.Fatalf("help texts name the environment %v: want TEMPORAL_ADDRESS and DCD_STORAGE among them", env)
	}
	starters := 0
	for name, s := range f.Services {
		if len(s.Command) < 2 || s.Command[0] != "starter" {
			continue
		}
		starters++
		sub, args := s.Command[1:2], s.Command[2:]
		if sub[0] == "schedule" && len(args) > 0 {
			sub, args = s.Command[1:3], s.Command[3:]
		}
		known := false
		for _, c := range commands {
			known = known || c.name == strings.Join(sub, " ")
		}
		if !known {
			t.Errorf("service %s: starter has no command %q", name, strings.Join(sub, " "))
			continue
		}
		flags := compose.FlagsInHelp(starterHelp(sub...))
		for _, a := range args {
			if !strings.HasPrefix(a, "-") {
				continue
			}
			fl, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if !flags[fl] {
				t.Errorf("service %s: starter %s has no flag -%s (it has %v)", name, strings.Join(sub, " "), fl, flags)
			}
		}
		for k := range s.Environment {
			if !env[k] && !compose.CredentialEnv(k) {
				t.Errorf("service %s sets %s, which the starter does not read (it reads %v and storage credentials)", name, k, env)
			}
		}
		if err := f.CheckAddress(name, "TEMPORAL_ADDRESS", s.Environment["TEMPORAL_ADDRESS"]); err != nil {
			t.Error(err)
		}
		if sub[0] != "run" {
			continue
		}
		e, _, _ := testCLI()
		a, err := parseRun(e, args)
		if err != nil {
			t.Errorf("service %s: starter run %q: %v", name, args, err)
			continue
		}
		host := mounted(s.Volumes, a.config)
		if host == "" {
			t.Errorf("service %s: config %s is not in a folder mounted from the repository (volumes %q)", name, a.config, s.Volumes)
			continue
		}
		cfg, err := schemas.LoadConfig(filepath.Join("..", host))
		if err == nil {
			err = cfg.Validate()
		}
		if err != nil {
			t.Errorf("service %s: config %s (%s): %v", name, a.config, host, err)
		}
	}
	if starters == 0 {
		t.Error("no starter service")
	}
}

// mounted maps a container path to the repository path a bind mount
// ("./dir:/path[:ro]") gives it; "" when none does.
func mounted(volumes []string, path string) string {
	for _, v := range volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !strings.HasPrefix(parts[0], ".") {
			continue
		}
		if rel, ok := strings.CutPrefix(path, strings.TrimSuffix(parts[1], "/")+"/"); ok {
			return filepath.Join(parts[0], rel)
		}
	}
	return ""
}
