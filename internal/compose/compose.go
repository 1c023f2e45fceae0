// Package compose reads the repository's docker-compose.yml, so that tests
// can check it against what the worker and starter binaries accept: no
// Docker engine runs where the tests do, and a compose file that names a
// renamed flag would otherwise only fail on a user's machine.
//
// It understands the subset of the Compose format that DCD's file uses:
// services with image, build, command, entrypoint, environment (a map),
// ports ("HOST:CONTAINER"), depends_on (a list or a map), profiles,
// volumes and deploy device reservations.
package compose

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"
)

// File is a compose file.
type File struct {
	Services map[string]Service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

// Service is one service.
type Service struct {
	Image       string            `yaml:"image"`
	Build       *Build            `yaml:"build"`
	Command     []string          `yaml:"command"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	DependsOn   DependsOn         `yaml:"depends_on"`
	Profiles    []string          `yaml:"profiles"`
	Volumes     []string          `yaml:"volumes"`
	// StopGracePeriod is how long docker lets the service stop after
	// SIGTERM before SIGKILL (a duration such as "50s"; docker's 10 s
	// when empty).
	StopGracePeriod string `yaml:"stop_grace_period"`
	Deploy          struct {
		Resources struct {
			Reservations struct {
				Devices []Device `yaml:"devices"`
			} `yaml:"reservations"`
		} `yaml:"resources"`
	} `yaml:"deploy"`
}

// Build is a service's build section.
type Build struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
	Target     string `yaml:"target"`
}

// Device is a device reservation.
type Device struct {
	Driver       string   `yaml:"driver"`
	Count        any      `yaml:"count"`
	Capabilities []string `yaml:"capabilities"`
}

// DependsOn lists the services a service depends on, from either form.
type DependsOn []string

// UnmarshalYAML accepts a list of names or a map of name to condition.
func (d *DependsOn) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.SequenceNode:
		var names []string
		if err := n.Decode(&names); err != nil {
			return err
		}
		*d = names
	case yaml.MappingNode:
		var m map[string]any
		if err := n.Decode(&m); err != nil {
			return err
		}
		*d = nil
		for k := range m {
			*d = append(*d, k)
		}
		slices.Sort(*d)
	default:
		return fmt.Errorf("compose: depends_on: want a list or a map, line %d", n.Line)
	}
	return nil
}

// Load reads a compose file.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	var f File
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("compose: %s: %w", path, err)
	}
	return &f, nil
}

// ContainerPorts are the container sides of a service's port mappings.
func (s Service) ContainerPorts() []string {
	var out []string
	for _, p := range s.Ports {
		p = strings.TrimSuffix(strings.TrimSuffix(p, "/tcp"), "/udp")
		out = append(out, p[strings.LastIndex(p, ":")+1:])
	}
	return out
}

// HostPorts are the host sides of a service's port mappings.
func (s Service) HostPorts() []string {
	var out []string
	for _, p := range s.Ports {
		if i := strings.LastIndex(p, ":"); i >= 0 {
			out = append(out, p[:i])
		}
	}
	return out
}

// CheckAddress checks that hostport, as service from names it, points at
// another service of the file on a port that service exposes, and that
// from depends on it.
func (f *File) CheckAddress(from, what, hostport string) error {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("compose: service %s: %s %q: %v", from, what, hostport, err)
	}
	target, ok := f.Services[host]
	if !ok {
		return fmt.Errorf("compose: service %s: %s %q: no service %q", from, what, hostport, host)
	}
	if !slices.Contains(target.ContainerPorts(), port) {
		return fmt.Errorf("compose: service %s: %s %q: service %s exposes ports %q, not %s", from, what, hostport, host, target.Ports, port)
	}
	if !slices.Contains(f.Services[from].DependsOn, host) {
		return fmt.Errorf("compose: service %s: %s %q: %s does not depend on %s", from, what, hostport, from, host)
	}
	return nil
}

// CheckStorage checks a gocloud bucket URL: when it has an endpoint (an
// S3-compatible server), that endpoint must be a service of the file.
func (f *File) CheckStorage(from, storage string) error {
	u, err := url.Parse(storage)
	if err != nil {
		return fmt.Errorf("compose: service %s: DCD_STORAGE %q: %v", from, storage, err)
	}
	ep := u.Query().Get("endpoint")
	if ep == "" {
		return nil
	}
	eu, err := url.Parse(ep)
	if err != nil {
		return fmt.Errorf("compose: service %s: DCD_STORAGE endpoint %q: %v", from, ep, err)
	}
	return f.CheckAddress(from, "DCD_STORAGE endpoint", eu.Host)
}

var envInUsage = regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)`)

// EnvNames are the environment variables a FlagSet's flags read, as their
// usage strings name them: "(env NAME)" or "(env NAME; …)".
func EnvNames(fs *flag.FlagSet) map[string]bool {
	names := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) {
		for _, m := range envInUsage.FindAllStringSubmatch(f.Usage, -1) {
			names[m[1]] = true
		}
	})
	return names
}

// EnvNamesInText are the "(env NAME)" mentions of a help text.
func EnvNamesInText(text string) map[string]bool {
	names := map[string]bool{}
	for _, m := range envInUsage.FindAllStringSubmatch(text, -1) {
		names[m[1]] = true
	}
	return names
}

var flagInHelp = regexp.MustCompile(`^\s+-([A-Za-z0-9][A-Za-z0-9_-]*)`)

// FlagsInHelp are the flags a flag package help text (PrintDefaults) lists.
func FlagsInHelp(text string) map[string]bool {
	names := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if m := flagInHelp.FindStringSubmatch(sc.Text()); m != nil {
			names[m[1]] = true
		}
	}
	return names
}

// CredentialEnv reports whether name is a storage credential or setting
// that a worker passes to its cloud SDK (AWS_*, GOOGLE_*, AZURE_*).
func CredentialEnv(name string) bool {
	for _, p := range []string{"AWS_", "GOOGLE_", "AZURE_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// DockerfileStages are the names of a Dockerfile's stages (FROM … AS name)
// and the default value of each ARG.
func DockerfileStages(path string) (stages []string, args map[string]string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("compose: %w", err)
	}
	args = map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 4 && strings.EqualFold(fields[0], "FROM") && strings.EqualFold(fields[2], "AS"):
			stages = append(stages, fields[3])
		case len(fields) == 2 && strings.EqualFold(fields[0], "ARG"):
			if k, v, ok := strings.Cut(fields[1], "="); ok {
				args[k] = v
			}
		}
	}
	return stages, args, nil
}
