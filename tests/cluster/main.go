// Command kcp is a multi-call binary holding a whole Kubernetes control plane for local tests:
// etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl.
//
// It dispatches on the name it was started as (a symlink named kubectl, etcd, ...) or, failing
// that, on its first argument: `kcp kube-apiserver --etcd-servers=...`.
package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // CronJob time zones

	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

var commands = map[string]func(args []string) int{
	"free-ports": freePorts,
	"etcd": func(args []string) int {
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	},
	"kube-apiserver": func(args []string) int {
		c := apiserver.NewAPIServerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kube-controller-manager": func(args []string) int {
		c := controllermanager.NewControllerManagerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kube-scheduler": func(args []string) int {
		c := scheduler.NewSchedulerCommand()
		c.SetArgs(args)
		return cli.Run(c)
	},
	"kubectl": func(args []string) int {
		logs.GlogSetter(kubectl.GetLogVerbosity(append([]string{"kubectl"}, args...))) //nolint:errcheck
		c := kubectl.NewDefaultKubectlCommand()
		c.SetArgs(args)
		if err := cli.RunNoErrOutput(c); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

// freePorts prints n TCP ports that are free on 127.0.0.1, for the scripts to hand out.
func freePorts(args []string) int {
	n := 1
	if len(args) > 0 {
		if _, err := fmt.Sscan(args[0], &n); err != nil {
			fmt.Fprintf(os.Stderr, "free-ports: %v\n", err)
			return 2
		}
	}
	var ports []any
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintf(os.Stderr, "free-ports: %v\n", err)
			return 1
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	fmt.Println(ports...)
	return 0
}

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	args := os.Args[1:]
	run, ok := commands[name]
	if !ok && len(args) > 0 {
		name, args = args[0], args[1:]
		run, ok = commands[name]
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: kcp {etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|free-ports} [flags]\n"+
			"       or call it through a symlink with one of those names\n")
		os.Exit(2)
	}
	os.Exit(run(args))
}
