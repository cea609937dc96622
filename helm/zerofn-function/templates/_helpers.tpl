{{- define "zerofn.name" -}}
{{- required "function.name is required (zerofn values generates it)" .Values.function.name -}}
{{- end -}}

{{- define "zerofn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zerofn.name" . }}
app.kubernetes.io/component: function
{{- end -}}

{{- define "zerofn.labels" -}}
{{ include "zerofn.selectorLabels" . }}
app.kubernetes.io/part-of: zerofn
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Values.image.tag | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "zerofn.image" -}}
{{ required "image.repository is required" .Values.image.repository }}:{{ required "image.tag is required" .Values.image.tag }}
{{- end -}}

{{- define "zerofn.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "zerofn.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The runtime's environment: plain values, then secret references, then what the chart fixes. */}}
{{- define "zerofn.env" -}}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- range $k, $ref := .Values.secretEnv }}
- name: {{ $k }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
- name: ZEROFN_DATA_DIR
  value: /tmp/zerofn
{{- end -}}

{{- define "zerofn.probes" -}}
livenessProbe:
  httpGet: { path: /healthz, port: http }
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: { path: /readyz, port: http }
  periodSeconds: 2
  failureThreshold: 2
startupProbe:
  httpGet: { path: /healthz, port: http }
  periodSeconds: 1
  failureThreshold: 30
{{- end -}}
