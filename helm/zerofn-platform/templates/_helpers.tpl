{{- define "platform.labels" -}}
app.kubernetes.io/part-of: zerofn
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "gateway.selectorLabels" -}}
app.kubernetes.io/name: zerofn-gateway
app.kubernetes.io/component: gateway
{{- end -}}

{{/* The brokers' address every client uses: the TLS listener of the Kafka declared here, unless overridden. */}}
{{- define "platform.kafkaBootstrap" -}}
{{- $k := .Values.kafka -}}
{{- $k.bootstrapServers | default (printf "%s-kafka-bootstrap.%s.svc:%d" $k.cluster .Release.Namespace (ternary 9092 9093 (eq $k.insecurePlaintextDevOnly true))) -}}
{{- end -}}
