{{/* Labels of every object of the release. */}}
{{- define "consorzio.labels" -}}
app.kubernetes.io/name: consorzio
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Selects the operator's pods. */}}
{{- define "consorzio.selector" -}}
app.kubernetes.io/name: consorzio
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
