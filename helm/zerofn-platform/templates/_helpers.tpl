{{- define "platform.labels" -}}
app.kubernetes.io/part-of: zerofn
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: zerofn-gateway
app.kubernetes.io/component: gateway
{{- end -}}
